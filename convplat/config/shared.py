"""Names and arithmetic several configs share, defined once: the optimizers a training config
may name, the executors a fan-out command may use, and how a Ray Train config splits its
global batch over its workers."""

from __future__ import annotations

import math

from convplat.config.validate import check, check_loader_workers

OPTIMIZERS = ("sgd", "adam")
WEIGHTS_CHOICES = ("final", "best", "latest")  # which of a run's weights to load
EXECUTORS = ("auto", "local", "ray")  # see convplat.cluster.use_ray for what each means

# Where data is read and written and which cluster is joined come from flags only: a shared
# recipe file must not be able to send a user's run elsewhere (DESIGN.md, ownership).
FLAG_ONLY = ("address", "out", "data", "run_name")


class WorkerScale:
    """Mixin for a Ray Train config with ``gpus``, ``workers`` and a global ``batch_size``."""

    gpus: int
    workers: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    seed: int
    max_failures: int
    cpus_per_worker: int
    loader_workers: int
    limit_train_batches: int

    @property
    def world_size(self) -> int:
        """Number of Ray Train workers: one per GPU, or ``workers`` CPU workers."""
        return self.gpus if self.gpus > 0 else self.workers

    @property
    def per_worker_batch(self) -> int:
        """Each worker's share of the global batch (the batch is a multiple of the workers)."""
        return self.batch_size // self.world_size

    def check_run_settings(self) -> None:
        """The settings every Ray Train config shares, checked before Ray starts (a bad one
        would otherwise fail in the workers, or train to nan losses, after the output folder
        is made): the optimizer's numbers, the seed, restarts, CPUs, loaders, batch limits."""
        # inf passes a plain "> 0" and trains to nan losses before anything fails.
        check(0 < self.lr < math.inf, f"--lr: expected a finite value > 0, got {self.lr}")
        check(0 <= self.momentum < 1, f"--momentum: expected 0..1, got {self.momentum}")
        check(
            0 <= self.weight_decay < math.inf,
            f"--weight-decay: expected a finite value >= 0, got {self.weight_decay}",
        )
        check(self.seed >= 0, f"--seed: expected >= 0, got {self.seed}")
        check(
            self.max_failures >= -1,
            f"--max-failures: expected >= 0, or -1 for no limit, got {self.max_failures}",
        )
        check(
            self.cpus_per_worker >= 0,
            f"--cpus-per-worker: expected >= 0, got {self.cpus_per_worker}",
        )
        for flag, value in (
            ("--limit-train-batches", self.limit_train_batches),
            ("--limit-val-batches", getattr(self, "limit_val_batches", 0)),
        ):
            check(value >= 0, f"{flag}: expected >= 0 (0: all), got {value}")
        check_loader_workers(self.loader_workers)
        self.check_scale()

    def check_scale(self) -> None:
        """``--gpus``, ``--workers`` and ``--batch-size`` fit together."""
        check(self.gpus >= 0, f"--gpus: expected >= 0, got {self.gpus}")
        check(self.workers >= 1, f"--workers: expected >= 1, got {self.workers}")
        check(self.batch_size >= 1, f"--batch-size: expected >= 1, got {self.batch_size}")
        check(
            self.batch_size % self.world_size == 0,
            f"--batch-size: expected a multiple of the {self.world_size} workers, "
            f"got {self.batch_size}",
        )
