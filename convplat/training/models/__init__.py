"""The networks as published: AlexNet (2012), ZFNet (2014), OverFeat fast/accurate (2014),
behind one registry and one ``ConvNet`` contract."""

from convplat.training.models import alexnet as _alexnet  # noqa: F401  (registers builders)
from convplat.training.models import overfeat as _overfeat  # noqa: F401
from convplat.training.models import zfnet as _zfnet  # noqa: F401
from convplat.training.models.alexnet import AlexNet
from convplat.training.models.base import INIT_SCHEMES, ConvNet, reinitialize
from convplat.training.models.layers import LinearAsConv2d, LocalResponseNorm
from convplat.training.models.overfeat import OverFeat, OverFeatAccurate, OverFeatFast
from convplat.training.models.registry import (
    count_macs,
    create_model,
    describe_models,
    input_size,
    list_models,
    model_info,
    register_model,
)
from convplat.training.models.zfnet import ZFNet, renormalize_filters

__all__ = [
    "INIT_SCHEMES",
    "AlexNet",
    "ConvNet",
    "LinearAsConv2d",
    "LocalResponseNorm",
    "OverFeat",
    "OverFeatAccurate",
    "OverFeatFast",
    "ZFNet",
    "input_size",
    "count_macs",
    "create_model",
    "describe_models",
    "list_models",
    "model_info",
    "register_model",
    "reinitialize",
    "renormalize_filters",
]
