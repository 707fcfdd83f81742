"""Models, the shard input pipeline, augmentation, the Ray Train loop and evaluation."""

from convplat.training.evaluate import evaluate
from convplat.training.trainer import fit

__all__ = ["evaluate", "fit"]
