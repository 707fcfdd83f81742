"""Every command's settings, in one home: frozen dataclasses validated at construction by one
validator (:mod:`convplat.config.validate`), JSON-serialisable.

One module per command (``prepare``, ``train``, ``transfer``); what several share is in
``shared``. CLI values (only those given) override a recipe, which overrides the defaults here;
``asdict(config)`` is what crosses process boundaries (Ray tasks, Ray Train workers) and what
``config.json`` records.
"""

from convplat.config.prepare import LAYOUT_CHOICES, PrepareConfig
from convplat.config.shared import EXECUTORS, FLAG_ONLY, OPTIMIZERS, WorkerScale
from convplat.config.train import (
    SCHEDULES,
    TrainConfig,
    merge_train_config,
    resume_train_config,
)
from convplat.config.transfer import TransferConfig

__all__ = [
    "EXECUTORS",
    "FLAG_ONLY",
    "LAYOUT_CHOICES",
    "OPTIMIZERS",
    "SCHEDULES",
    "PrepareConfig",
    "TrainConfig",
    "TransferConfig",
    "WorkerScale",
    "merge_train_config",
    "resume_train_config",
]
