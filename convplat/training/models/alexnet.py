"""AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012) as published: two columns, LRN,
overlapping pooling. Not torchvision's "one weird trick" variant."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from convplat.training.models.base import ConvNet, fc_classifier, init_normal
from convplat.training.models.layers import LocalResponseNorm
from convplat.training.models.registry import register_model
from convplat.training.models.variants import (
    PAPER_FC_UNITS,
    PAPER_MAPS,
    ablation,
    register_variants,
)


class AlexNet(ConvNet):
    """The 2012 ImageNet network (§3.5, Fig. 2), 224x224 input.

    conv1 96 11x11/4 -> ReLU -> LRN -> max-pool 3/2 -> conv2 256 5x5 -> ReLU -> LRN -> pool
    -> conv3 384 3x3 -> conv4 384 3x3 -> conv5 256 3x3 -> ReLU -> pool -> fc6 4096 -> fc7 4096
    -> fc8, ReLU after every layer but fc8, dropout 0.5 on fc6/fc7 outputs (§4.2).

    - Columns (§3.2, §3.5): with ``columns=2`` conv2, conv4 and conv5 see only the maps of
      their own GPU (``groups=2``); conv3 and the fc layers are dense. LRN, being on one GPU,
      normalises within its column too. ``columns=1`` is the same net with every layer dense.
    - LRN (§3.3) after ReLU, before pooling: k=2, n=5, α=1e-4, β=0.75.
    - Overlapping pooling (§3.4): 3x3 windows, stride 2.
    - 224 vs 55: the paper gives a 224x224 input and a 55x55 conv1 map but no padding;
      (224 - 11)/4 + 1 = 54.25. We pad conv1 by 2: (224 + 4 - 11)/4 + 1 = 55.25 -> 55, so
      the last 1 pixel row/column of padding is never covered (the same map, and the same
      multiply-adds, as Caffe's unpadded 227 input).
    - Init (§5): all weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, else 0.

    Maps: 224 -> conv1 55 -> pool 27 -> conv2 27 -> pool 13 -> conv3-5 13 -> pool 6.
    Parameters (1000 classes): 60,965,224 with two columns, 62,378,344 with one.

    ``remove``, ``maps`` and ``fc_units`` build ZFNet Table 3's ablations of this net
    (``variants.py``); the defaults are the published net.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        columns: int = 2,
        dropout: float = 0.5,
        *,
        remove: Sequence[int] = (),
        maps: Sequence[int] = PAPER_MAPS,
        fc_units: int = PAPER_FC_UNITS,
    ) -> None:
        if columns not in (1, 2):
            raise ValueError(f"expected columns 1 or 2, got {columns}")
        g = columns
        ab = ablation(remove, maps, fc_units)  # ZFNet Table 3 options (variants.py)
        layers: list[nn.Module] = [
            nn.Conv2d(3, 96, 11, stride=4, padding=2),  # 0 conv1  (B, 96, 55, 55)
            nn.ReLU(inplace=False),
            LocalResponseNorm(5, 1e-4, 0.75, 2.0, columns=g),  # §3.3
            nn.MaxPool2d(3, 2),  # 3  (B, 96, 27, 27)
            nn.Conv2d(96, 256, 5, padding=2, groups=g),  # 4 conv2  (B, 256, 27, 27)
            nn.ReLU(inplace=False),
            LocalResponseNorm(5, 1e-4, 0.75, 2.0, columns=g),
            nn.MaxPool2d(3, 2),  # 7  (B, 256, 13, 13)
        ]
        width = 256
        for n, out in ab.convs:  # 8 conv3 (dense), 10 conv4, 12 conv5 (B, maps, 13, 13)
            layers += [
                nn.Conv2d(width, out, 3, padding=1, groups=1 if n == 3 else g),
                nn.ReLU(inplace=False),
            ]
            width = out
        layers.append(nn.MaxPool2d(3, 2))  # 14  (B, 256, 6, 6)
        features = nn.Sequential(*layers)
        classifier = fc_classifier(width * 6 * 6, num_classes, dropout, ab.hidden)  # (B, C)
        super().__init__(
            features,
            classifier,
            input_size=224,
            feature_size=6,
            num_classes=num_classes,
            layer_names=ab.layer_names(),
        )
        self.columns = columns
        cols = "two columns" if columns == 2 else "one column, all layers dense"
        self.paper = f"Krizhevsky et al. 2012, §3.5 ({cols}){ab.describe()}"
        # §5: "initialized the neuron biases in the second, fourth, and fifth convolutional
        # layers, as well as in the fully-connected hidden layers, with the constant 1".
        for name, layer in self.named_layers().items():
            init_normal(
                layer, bias=1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            )


@register_model
def alexnet(num_classes: int = 1000, **kw) -> AlexNet:
    """AlexNet with the paper's two GPU columns (grouped conv2/4/5): 60,965,224 parameters."""
    return AlexNet(num_classes, columns=2, **kw)


@register_model
def alexnet_1col(num_classes: int = 1000, **kw) -> AlexNet:
    """AlexNet with every layer dense (one column, full-size): 62,378,344 parameters."""
    return AlexNet(num_classes, columns=1, **kw)


def _alexnet_variant(num_classes: int = 1000, **kw) -> AlexNet:
    return AlexNet(num_classes, columns=2, **kw)


register_variants("alexnet", _alexnet_variant)  # alexnet_no34, alexnet_b, ... (two columns)
