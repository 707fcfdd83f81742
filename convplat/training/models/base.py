"""The one contract every convplat network follows, so training, transfer, visualisation and
dense evaluation never ask which net they hold (the timm ``forward_features`` idea)."""

from __future__ import annotations

import copy as copy_module
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from convplat.training.models.layers import LinearAsConv2d

INIT_STD = 0.01  # AlexNet §5, ZFNet §3, OverFeat §3.1: weights ~ N(0, 1e-2)


class ConvNet(nn.Module):
    """Conv layers (``features``) then an fc classifier, with the shared contract.

    Attributes:
        features: conv/ReLU/norm/pool layers; its last module is the final max-pool
            (also reachable as ``final_pool``).
        classifier: fc6, fc7 (each ReLU then dropout) and the output layer ``classifier[-1]``;
            ``nn.Linear`` layers (AlexNet, ZFNet) or convolutions (OverFeat).
        input_size: side of the square training/test crop the fc layers were sized for.
        feature_size: side of the pooled last-conv map at ``input_size`` (= fc6's kernel).
        num_features: width of the last hidden layer (fc7), the transfer-learning feature.
        layer_names: one name per conv layer of ``features`` then per fc layer of
            ``classifier``, in order (``conv1``..``conv5``, ``fc6``, ``fc7``, ``fc8`` by
            default; an ablation without layers 3,4 has ``conv1, conv2, conv5, ...``).
        renormalize_radius: filter-RMS radius the trainer enforces after each optimizer step
            via ``renormalize_filters`` (ZFNet §3), or None.
    """

    paper: str = ""  # which paper variant, with sections
    renormalize_radius: ClassVar[float | None] = None

    def __init__(
        self,
        features: nn.Sequential,
        classifier: nn.Sequential,
        *,
        input_size: int,
        feature_size: int,
        num_classes: int,
        layer_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(features[-1], nn.MaxPool2d):
            raise TypeError("expected features to end with the final nn.MaxPool2d")
        self.features = features
        self.classifier = classifier
        self.input_size = input_size
        self.feature_size = feature_size
        self.num_classes = num_classes
        last = classifier[-1]
        self.num_features = last.in_features if isinstance(last, nn.Linear) else last.in_channels
        convs = sum(isinstance(m, nn.Conv2d) for m in features)
        fcs = sum(isinstance(m, nn.Linear | nn.Conv2d) for m in classifier)
        if layer_names is None:  # the output layer is fc8 whatever the depth (OverFeat too)
            layer_names = [f"conv{i + 1}" for i in range(convs)]
            layer_names += [f"fc{9 - fcs + i}" for i in range(fcs)]
        if len(layer_names) != convs + fcs or len(set(layer_names)) != len(layer_names):
            raise ValueError(f"expected {convs + fcs} distinct layer names, got {layer_names}")
        self.layer_names = tuple(layer_names)

    # --- the contract -----------------------------------------------------------------------

    def named_layers(self) -> dict[str, nn.Conv2d | nn.Linear]:
        """``{"conv1": Conv2d, ..., "fc8": Linear}``: the weight layers by their paper names."""
        layers = [m for m in self.features if isinstance(m, nn.Conv2d)]
        layers += [m for m in self.classifier if isinstance(m, nn.Linear | nn.Conv2d)]
        return dict(zip(self.layer_names, layers, strict=True))

    def layer_ends(self) -> dict[str, tuple[str, int]]:
        """Where each named layer's output is complete: ``{name: (stage, n)}`` with stage
        ``features`` or ``classifier`` and ``n`` the modules of that stage to run.

        A layer's output is everything up to the next weight layer (ZFNet Fig. 3's "layer n":
        conv, ReLU, and the pool and normalisation that follow it; fc6/fc7 after ReLU and
        dropout); the output layer's is the logits.
        """
        ends: dict[str, tuple[str, int]] = {}
        names = iter(self.layer_names)
        for stage, modules in (("features", self.features), ("classifier", self.classifier)):
            starts = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear | nn.Conv2d)]
            for end in starts[1:] + [len(modules)]:
                ends[next(names)] = (stage, end)
        return ends

    @property
    def final_pool(self) -> nn.MaxPool2d:
        """The last max-pool; OverFeat offset pooling applies it to shifted unpooled maps."""
        return self.features[-1]

    @property
    def conv_classifier(self) -> bool:
        """True when the classifier is already convolutional (OverFeat)."""
        return isinstance(self.classifier[0], nn.Conv2d)

    def forward_features(self, images: torch.Tensor, pool: bool = True) -> torch.Tensor:
        """Conv layers: (B, 3, H, W) -> (B, C, h, w), with or without the final max-pool."""
        layers = self.features if pool else self.features[:-1]
        return layers(images)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Classifier on pooled maps (B, C, s, s), s = feature_size.

        Returns logits (B, num_classes), or with ``pre_logits`` the last hidden layer (fc7
        after ReLU and dropout) (B, num_features): the features ZFNet §5.2 freezes for transfer.
        """
        s = self.feature_size
        if tuple(x.shape[-2:]) != (s, s):
            raise ValueError(
                f"expected {s}x{s} pooled maps from a {self.input_size}x{self.input_size} "
                f"image, got {tuple(x.shape[-2:])}; use forward_dense for other sizes"
            )
        if not self.conv_classifier:
            x = torch.flatten(x, 1)  # (B, C·s·s)
        layers = self.classifier[:-1] if pre_logits else self.classifier
        return torch.flatten(layers(x), 1)  # conv form: (B, n, 1, 1) -> (B, n)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, input_size, input_size) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(images))

    def forward_dense(self, images: torch.Tensor) -> torch.Tensor:
        """OverFeat §3.3 dense evaluation, coarse stride (Δ = 0).

        The classifier slides over the pooled maps as convolutions: (B, 3, H, W) ->
        (B, num_classes, h - s + 1, w - s + 1) scores, where (h, w) is the pooled map size and
        s = feature_size; an ``input_size`` image gives a 1x1 map equal to ``forward``.
        """
        return self.classifier_as_conv()(self.forward_features(images))

    def classifier_as_conv(self, copy: bool = False) -> nn.Sequential:
        """The classifier in convolutional form: fc6 as an s x s conv, fc7 and fc8 as 1x1.

        Args:
            copy: False shares the parameters with this model (gradients flow back into it);
                True returns independent ``nn.Conv2d`` layers with copied weights.
        """
        if self.conv_classifier:
            return copy_module.deepcopy(self.classifier) if copy else self.classifier
        layers: list[nn.Module] = []
        kernel = self.feature_size  # only fc6 sees the s x s window; later fcs are 1x1
        for layer in self.classifier:
            if isinstance(layer, nn.Linear):
                conv = LinearAsConv2d(layer, kernel)
                layers.append(conv.to_conv2d() if copy else conv)
                kernel = 1
            else:
                layers.append(copy_module.deepcopy(layer))  # ReLU / Dropout: no parameters
        return nn.Sequential(*layers).train(self.training)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the output layer with a fresh N(0, 0.01), bias-0 one of ``num_classes``."""
        if num_classes < 1:
            raise ValueError(f"expected num_classes >= 1, got {num_classes}")
        old = self.classifier[-1]
        kw = {"device": old.weight.device, "dtype": old.weight.dtype}
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, num_classes, **kw)
        else:
            new = nn.Conv2d(old.in_channels, num_classes, 1, **kw)
        init_normal(new, bias=0.0)
        self.classifier[-1] = new
        self.num_classes = num_classes


def init_normal(layer: nn.Module, bias: float, std: float = INIT_STD) -> None:
    """Weights ~ N(0, std), bias = constant. Meta tensors (shape-only models) hold no values:
    skipping them spares the first meta ``normal_`` its ~2 s import of torch's decompositions."""
    if layer.weight.is_meta:
        return
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.constant_(layer.bias, bias)


def fc_classifier(
    in_features: int, num_classes: int, dropout: float, hidden: Sequence[int] = (4096, 4096)
) -> nn.Sequential:
    """Hidden fc layers (Linear -> ReLU -> dropout, AlexNet §4.2: dropout on the hidden layers'
    outputs) and the output layer. Published nets: fc6, fc7 at 4096, indices fc6 = 0, fc7 = 3,
    fc8 = 6; ZFNet Table 3's ablations change or drop the hidden layers."""
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU(inplace=False), nn.Dropout(dropout)]
        width = units
    layers.append(nn.Linear(width, num_classes))  # fc8  (B, num_classes)
    return nn.Sequential(*layers)


INIT_SCHEMES = ("paper", "kaiming")


def reinitialize(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every conv/linear layer; ``paper`` keeps the builders' published init.

    ``kaiming`` (He et al. 2015: N(0, 2/fan_out) weights, zero biases, as torchvision does)
    is not in the 2012-14 papers; the demo preset uses it because the papers' N(0, 0.01) with
    unit biases sits on a long initial plateau on CPU-sized runs (shared/FIELD-NOTES.md).
    """
    if scheme == "paper":
        return model
    if scheme != "kaiming":
        raise ValueError(f"init: expected one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    last = model.classifier[-1]
    nn.init.normal_(last.weight, 0.0, INIT_STD)  # small logits at the start
    return model
