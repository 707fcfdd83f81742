"""Frozen layers of an ImageNet model, by their paper names (ZFNet §5.2: layers 1-7 fixed).

:class:`FeatureExtractor` takes any layer (``resolve_layer``: conv1..conv5, fc6, fc7, fc8 /
logits; conv maps flattened or globally pooled); transfer uses fc7, fc6 and conv5, `convplat
features` any layer. :class:`TransferNet` is that backbone with a new softmax layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from convplat.errors import ConfigError
from convplat.training.models import ConvNet

POOLS = ("flatten", "avg", "max")


def resolve_layer(model: ConvNet, name: str, last_conv_alias: bool = False) -> str:
    """The model's name for the layer ``name`` (``conv1``..``conv5``, ``fc6``, ``fc7``, ``fc8``;
    ``logits`` is the output layer). With ``last_conv_alias``, ``conv5`` is the last conv layer
    whatever its number (transfer's ``--cut conv5``: ZFNet's "layer 5"; OverFeat-accurate's
    conv6, whose maps OverFeat §3.3 calls layer 5).

    Raises:
        ConfigError: the model has no such layer (an ablation without it, or a typo).
    """
    key = name.strip().lower()
    names = model.layer_names
    convs = [n for n in names if n.startswith("conv")]
    if key == "logits":
        key = names[-1]
    elif key == "conv5" and last_conv_alias and convs:
        key = convs[-1]
    if key not in names:
        raise ConfigError(
            f"--layer: {model.__class__.__name__} has no layer {name!r}; "
            f"choose one of {', '.join(names)} or logits"
        )
    return key


def _reduce(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, h, w) maps -> (B, C·h·w) flattened, or (B, C) by global average / max pooling;
    fc outputs (B, n) or OverFeat's (B, n, 1, 1) -> (B, n)."""
    if x.dim() == 4 and pool == "avg":
        return x.mean(dim=(2, 3))
    if x.dim() == 4 and pool == "max":
        return x.amax(dim=(2, 3))
    return torch.flatten(x, 1)


def _conv_shapes(model: ConvNet) -> list[tuple[int, ...]]:
    """(C, h, w) after every module of ``features`` at ``input_size``, by shape propagation on
    the meta device (no compute, no copy of the weights)."""
    from torch.func import functional_call

    x = torch.empty(1, 3, model.input_size, model.input_size, device="meta")
    shapes = []
    for module in model.features:
        tensors = {n: torch.empty_like(t, device="meta") for n, t in module.state_dict().items()}
        x = functional_call(module, tensors, (x,))
        shapes.append(tuple(x.shape[1:]))
    return shapes


def layer_dims(
    model: ConvNet, cuts: Sequence[str], pool: str = "flatten", last_conv_alias: bool = True
) -> dict[str, int]:
    """Width of the features at each cut: conv layers C·h·w flattened (conv5 of AlexNet/ZFNet:
    256·6·6 = 9216) or C when pooled; fc layers their units."""
    if pool not in POOLS:
        raise ConfigError(f"--pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    ends = model.layer_ends()
    layers = model.named_layers()
    shapes = None
    dims = {}
    for cut in cuts:
        name = resolve_layer(model, cut, last_conv_alias)
        stage, end = ends[name]
        if stage == "classifier":
            layer = layers[name]
            dims[cut] = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            continue
        shapes = shapes or _conv_shapes(model)
        c, h, w = shapes[end - 1]
        dims[cut] = c if pool in ("avg", "max") else c * h * w
    return dims


class FeatureExtractor(nn.Module):
    """The layers of ``model`` up to one or more cuts, frozen (ZFNet §5.2: layers 1-7 fixed).

    It shares its modules with ``model`` and turns off their gradients (``requires_grad``), and
    it stays in eval mode whatever ``.train()`` is called with, so dropout never acts.

    Cuts are layer names (``resolve_layer``): a layer's output is everything up to the next
    weight layer, as in ZFNet Fig. 3 - ``conv1``..``conv5`` after their ReLU, pool and
    normalisation (``conv5``: the last conv layer's pooled maps, 256 x 6 x 6 for AlexNet/ZFNet),
    ``fc6``/``fc7`` after ReLU, ``fc8``/``logits`` before the softmax. Conv maps are flattened
    (``pool="flatten"``) or globally average/max pooled to one value per map. Transfer's cuts
    are ``fc7`` (default), ``fc6`` and ``conv5``; ``convplat features`` takes any layer.
    """

    def __init__(
        self,
        model: ConvNet,
        cuts: Sequence[str] = ("fc7",),
        pool: str = "flatten",
        last_conv_alias: bool = True,
    ) -> None:
        super().__init__()
        cuts = tuple(cuts)
        if not cuts or len(set(cuts)) != len(cuts):
            raise ConfigError(f"expected one or more distinct layers, got {cuts}")
        self.cuts = cuts
        self.pool = pool
        self.dims = layer_dims(model, cuts, pool, last_conv_alias)  # validates names and pool
        ends = model.layer_ends()
        self.at: dict[tuple[str, int], list[str]] = {}
        for cut in cuts:
            self.at.setdefault(ends[resolve_layer(model, cut, last_conv_alias)], []).append(cut)
        last = {
            stage: max((e for s, e in self.at if s == stage), default=0)
            for stage in ("features", "classifier")
        }
        self.uses_classifier = last["classifier"] > 0
        stop = len(model.features) if self.uses_classifier else last["features"]
        self.features = model.features[:stop]  # shares the modules
        self.hidden = model.classifier[: last["classifier"]]
        self.complete = stop == len(model.features)
        self.conv_classifier = model.conv_classifier
        self.feature_size = model.feature_size
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    def forward_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, S, S)`` model input -> ``{cut: (B, dim)}``."""
        out: dict[str, torch.Tensor] = {}
        x = images
        for i, layer in enumerate(self.features):
            x = layer(x)
            for cut in self.at.get(("features", i + 1), ()):
                out[cut] = _reduce(x, self.pool)
        if self.complete:
            s = self.feature_size
            if tuple(x.shape[-2:]) != (s, s):
                raise ValueError(f"expected {s}x{s} pooled maps, got {tuple(x.shape[-2:])}")
        if self.uses_classifier:
            if not self.conv_classifier:
                x = torch.flatten(x, 1)  # (B, C·s·s)
            for i, layer in enumerate(self.hidden):
                x = layer(x)
                for cut in self.at.get(("classifier", i + 1), ()):
                    out[cut] = torch.flatten(x, 1)  # conv form: (B, n, 1, 1) -> (B, n)
        return {cut: out[cut] for cut in self.cuts}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features at the first cut, ``(B, dim)``."""
        return self.forward_all(images)[self.cuts[0]]


def frozen_extractor(model: ConvNet, cut: str = "fc7") -> FeatureExtractor:
    """Layers 1..``cut`` of ``model`` as a frozen feature extractor (modifies ``model``'s
    ``requires_grad`` flags in place, as a torchvision fine-tuning script would)."""
    return FeatureExtractor(model, (cut,))


class TransferNet(nn.Module):
    """A frozen backbone up to ``cut`` and a new trainable softmax layer: the model that the
    cached-feature head training is equivalent to (only ``head`` has trainable parameters)."""

    def __init__(
        self, model: ConvNet, cut: str, num_classes: int, head: nn.Linear | None = None
    ) -> None:
        super().__init__()
        self.backbone = frozen_extractor(model, cut)
        dim = self.backbone.dims[cut]
        self.head = head if head is not None else nn.Linear(dim, num_classes)
        self.head.requires_grad_(True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
