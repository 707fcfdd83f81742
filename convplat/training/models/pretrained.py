"""torchvision's ImageNet-trained AlexNet in convplat's model contract (``torchvision:alexnet``).

ZFNet's transfer study needs an ImageNet-trained network; torchvision ships one
(``AlexNet_Weights.IMAGENET1K_V1``, top-1 56.5 % / top-5 79.1 % as torchvision publishes it),
which many users already have in their torch cache. It is Krizhevsky's 2014 "one weird
trick" variant, not the 2012 network: one column, 64-192-384-256-256 maps, no LRN (see
FIELD-NOTES: never compare its numbers with the paper's).

convplat never downloads weights at run time: the file is read from torchvision's own cache
location (``$TORCH_HOME/hub/checkpoints/<file name of the weights' URL>``), where
``torchvision.models.alexnet(weights="IMAGENET1K_V1")`` puts it.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
from torch import nn

from convplat.errors import ConvplatError
from convplat.training.models.base import ConvNet, fc_classifier

TORCHVISION_ALEXNET = "torchvision:alexnet"
# The normalisation those weights were trained with (torchvision's ImageClassification preset),
# on 0..1 pixel values; convplat's pixels are 0..255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision.models.AlexNet.features index -> ours (same modules, no in-place ReLU).
_FEATURES = {0: 0, 3: 3, 6: 6, 8: 8, 10: 10}
_CLASSIFIER = {1: 0, 4: 3, 6: 6}  # fc6, fc7, fc8 (torchvision's dropouts sit at 0 and 3)


class TorchvisionAlexNet(ConvNet):
    """torchvision's AlexNet layers in convplat's contract (``forward_features``,
    ``forward_head``, ``conv1``..``fc8``), so transfer's ``--cut fc7|fc6|conv5`` applies.

    Same weights and the same outputs in eval mode; in training, dropout sits after fc6 and
    fc7 (AlexNet §4.2, as in convplat's other nets) where torchvision drops fc6's and fc7's
    inputs.
    """

    paper = "torchvision AlexNet (Krizhevsky 2014 'one weird trick': one column, no LRN)"

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2),  # conv1 (B, 64, 55, 55)
            nn.ReLU(),
            nn.MaxPool2d(3, 2),  # (B, 64, 27, 27)
            nn.Conv2d(64, 192, 5, padding=2),  # conv2 (B, 192, 27, 27)
            nn.ReLU(),
            nn.MaxPool2d(3, 2),  # (B, 192, 13, 13)
            nn.Conv2d(192, 384, 3, padding=1),  # conv3
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),  # conv4
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),  # conv5 (B, 256, 13, 13)
            nn.ReLU(),
            nn.MaxPool2d(3, 2),  # (B, 256, 6, 6)
        )
        super().__init__(
            features,
            fc_classifier(256 * 6 * 6, num_classes, dropout),
            input_size=224,
            feature_size=6,
            num_classes=num_classes,
        )

    def load_torchvision_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``torchvision.models.alexnet`` state dict (its module indices)."""
        renamed = {}
        for key, value in state.items():
            stage, index, kind = key.split(".")
            table = _FEATURES if stage == "features" else _CLASSIFIER
            renamed[f"{stage}.{table[int(index)]}.{kind}"] = value
        self.load_state_dict(renamed)


def torchvision_cache_file() -> str:
    """Where torchvision's weights API keeps ``AlexNet_Weights.IMAGENET1K_V1``."""
    from torchvision.models import AlexNet_Weights

    name = os.path.basename(urlparse(AlexNet_Weights.IMAGENET1K_V1.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", name)


def load_torchvision_alexnet() -> TorchvisionAlexNet:
    """The ImageNet-trained torchvision AlexNet from the torch cache (never downloaded here)."""
    path = torchvision_cache_file()
    if not os.path.isfile(path):
        raise ConvplatError(
            f"torchvision's AlexNet weights are not in the torch cache: looked for {path} "
            "(set TORCH_HOME to use another cache); fetch them once with torchvision, e.g. "
            "torchvision.models.alexnet(weights='IMAGENET1K_V1')"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = TorchvisionAlexNet()
        model.load_torchvision_state(state)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: one line, not a trace
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConvplatError(f"{path}: not a torchvision AlexNet state dict ({reason})") from None
    return model.eval()


TORCHVISION_MODEL = "torchvision_alexnet"  # the model name a torchvision checkpoint records


def build_network(name: str, num_classes: int = 1000) -> ConvNet:
    """The registry's ``name``, or torchvision's AlexNet architecture for a checkpoint that
    came from torchvision (not in the registry: it is not one of the papers' networks)."""
    from convplat.training.models import create_model

    if name == TORCHVISION_MODEL:
        return TorchvisionAlexNet(num_classes)
    return create_model(name, num_classes=num_classes)


def fold_normalisation(model: TorchvisionAlexNet) -> TorchvisionAlexNet:
    """Put torchvision's per-channel ``/ std`` into conv1's weights (exact: conv1 is linear in
    its input), so convplat's pipeline — ``(pixels - mean image) * input_scale`` with the
    mean image ``255 * IMAGENET_MEAN`` and ``input_scale = 1/255`` — feeds the network what
    torchvision's ``Normalize`` would."""
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        model.features[0].weight /= std
    return model
