"""Transfer of ImageNet ConvNets to new datasets (ZFNet §5.2): frozen features, new softmax
heads, the Caltech split protocol, and the scratch / fine-tuning baselines."""

from convplat.config import TransferConfig
from convplat.transfer.checkpoint import load_checkpoint
from convplat.transfer.extractor import FeatureExtractor, TransferNet, frozen_extractor
from convplat.transfer.heads import fit_head
from convplat.transfer.protocol import format_table, make_splits, mean_class_accuracy
from convplat.transfer.transfer import transfer

__all__ = [
    "FeatureExtractor",
    "TransferConfig",
    "TransferNet",
    "fit_head",
    "format_table",
    "frozen_extractor",
    "load_checkpoint",
    "make_splits",
    "mean_class_accuracy",
    "transfer",
]
