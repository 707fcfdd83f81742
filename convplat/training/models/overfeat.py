"""OverFeat (Sermanet et al., ICLR 2014): the fast and accurate models, with the classifier
written as convolutions so one forward pass scores every window of a larger image."""

from __future__ import annotations

from torch import nn

from convplat.training.models.base import ConvNet, init_normal
from convplat.training.models.registry import register_model


def _conv_classifier(
    in_channels: int, kernel: int, hidden6: int, num_classes: int, dropout: float
) -> nn.Sequential:
    """§3.3: fc layers as convolutions; fc6 sees the kernel x kernel pooled maps, fc7/fc8 are
    1x1. Dropout 0.5 on the outputs of fc6 and fc7 (§3.1). Indices: fc6 0, fc7 3, fc8 6."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden6, kernel),  # fc6  (B, hidden6, h-k+1, w-k+1)
        nn.ReLU(inplace=False),
        nn.Dropout(dropout),
        nn.Conv2d(hidden6, 4096, 1),  # fc7  (B, 4096, ., .)
        nn.ReLU(inplace=False),
        nn.Dropout(dropout),
        nn.Conv2d(4096, num_classes, 1),  # fc8  (B, num_classes, ., .)
    )


class OverFeat(ConvNet):
    """Base for the two released OverFeat nets (O §3.1; layer tables from the official weights).

    Versus AlexNet: no contrast normalisation, non-overlapping max-pools, one dense column,
    ReLU after every layer but the last, init N(0, 1e-2) with biases 0 (§3.1). On an
    ``input_size`` image the classifier's map is 1x1 and ``forward`` flattens it to (B, C);
    ``forward_dense`` returns the whole (B, C, h, w) map on a larger image.
    """

    def _init_weights(self) -> None:
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                init_normal(layer, bias=0.0)


class OverFeatFast(OverFeat):
    """OverFeat "fast" model, 231x231 input (O §3.1 Table 1, README net 0).

    conv1 96 11x11/4 -> pool 2/2 -> conv2 256 5x5 -> pool 2/2 -> conv3 512, conv4 1024,
    conv5 1024 (3x3 pad 1) -> pool 2/2 -> fc6 3072 (6x6 conv) -> fc7 4096 -> fc8.

    Maps: 231 -> 56 -> 28 -> 24 -> 12 -> 12 -> 12 -> 12 -> 6 -> 1. Output side on an H image
    (README): ((H - 11)/4 + 1)/8 - 6, e.g. 263 -> 2; each output is a 231 window, step 32.
    Parameters (1000 classes): 145,920,872.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4),  # 0 conv1  (B, 96, 56, 56)
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2, 2),  # 2  (B, 96, 28, 28)
            nn.Conv2d(96, 256, 5),  # 3 conv2  (B, 256, 24, 24)
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2, 2),  # 5  (B, 256, 12, 12)
            nn.Conv2d(256, 512, 3, padding=1),  # 6 conv3  (B, 512, 12, 12)
            nn.ReLU(inplace=False),
            nn.Conv2d(512, 1024, 3, padding=1),  # 8 conv4  (B, 1024, 12, 12)
            nn.ReLU(inplace=False),
            nn.Conv2d(1024, 1024, 3, padding=1),  # 10 conv5  (B, 1024, 12, 12)
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2, 2),  # 12  (B, 1024, 6, 6)
        )
        classifier = _conv_classifier(1024, 6, 3072, num_classes, dropout)  # (B, C, 1, 1)
        super().__init__(
            features, classifier, input_size=231, feature_size=6, num_classes=num_classes
        )
        self.paper = "Sermanet et al. 2014, §3.1 fast model"
        self._init_weights()


class OverFeatAccurate(OverFeat):
    """OverFeat "accurate" model, 221x221 input (O §3.1 Table 3, README net 1).

    conv1 96 7x7/2 -> pool 3/3 -> conv2 256 7x7 -> pool 2/2 -> conv3 512, conv4 512,
    conv5 1024, conv6 1024 (3x3 pad 1) -> pool 3/3 -> fc6 4096 (5x5 conv) -> fc7 4096 -> fc8,
    the paper's layers 7, 8, 9 (named as in the other models). The "layer 5" maps of §3.3
    are this net's last conv, conv6.

    Maps: 221 -> 108 -> 36 -> 30 -> 15 -> 15 (x4) -> 5 -> 1. §3.3 scales: 245x245 -> last conv
    17x17 -> pooled 5x5 -> 1x1; 281x317 -> 20x23 -> 6x7 -> 2x3 (coarse stride, Δ = 0).
    Parameters (1000 classes): 144,656,488.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        features = nn.Sequential(
            nn.Conv2d(3, 96, 7, stride=2),  # 0 conv1  (B, 96, 108, 108)
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 3),  # 2  (B, 96, 36, 36)
            nn.Conv2d(96, 256, 7),  # 3 conv2  (B, 256, 30, 30)
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2, 2),  # 5  (B, 256, 15, 15)
            nn.Conv2d(256, 512, 3, padding=1),  # 6 conv3  (B, 512, 15, 15)
            nn.ReLU(inplace=False),
            nn.Conv2d(512, 512, 3, padding=1),  # 8 conv4  (B, 512, 15, 15)
            nn.ReLU(inplace=False),
            nn.Conv2d(512, 1024, 3, padding=1),  # 10 conv5  (B, 1024, 15, 15)
            nn.ReLU(inplace=False),
            nn.Conv2d(1024, 1024, 3, padding=1),  # 12 conv6  (B, 1024, 15, 15)
            nn.ReLU(inplace=False),
            nn.MaxPool2d(3, 3),  # 14  (B, 1024, 5, 5)
        )
        classifier = _conv_classifier(1024, 5, 4096, num_classes, dropout)  # (B, C, 1, 1)
        super().__init__(
            features, classifier, input_size=221, feature_size=5, num_classes=num_classes
        )
        self.paper = "Sermanet et al. 2014, §3.1 accurate model"
        self._init_weights()


@register_model
def overfeat_fast(num_classes: int = 1000, **kw) -> OverFeatFast:
    """OverFeat fast model, 231x231 input: 145,920,872 parameters."""
    return OverFeatFast(num_classes, **kw)


@register_model
def overfeat_accurate(num_classes: int = 1000, **kw) -> OverFeatAccurate:
    """OverFeat accurate model, 221x221 input: 144,656,488 parameters."""
    return OverFeatAccurate(num_classes, **kw)
