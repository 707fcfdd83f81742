"""Names and arithmetic several configs share, defined once: the optimizers a training config
may name, the executors a fan-out command may use, and how a Ray Train config splits its
global batch over its workers."""

from __future__ import annotations

from convplat.config.validate import check

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

    @property
    def world_size(self) -> int:
        """Number of Ray Train workers: one per GPU, or ``workers`` CPU workers."""
        return self.gpus if self.gpus > 0 else self.workers

    @property
    def per_worker_batch(self) -> int:
        """Each worker's share of the global batch (the batch is a multiple of the workers)."""
        return self.batch_size // self.world_size

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
