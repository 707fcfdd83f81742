"""Configuration objects: frozen dataclasses validated at construction, JSON-serialisable.

CLI values (only those given) override the defaults here; `asdict(config)` is what crosses
process boundaries (Ray tasks, Ray Train workers) and what `config.json` records.
"""

from __future__ import annotations

from dataclasses import dataclass

from convplat.errors import ConfigError

LAYOUT_CHOICES = ("auto", "imagefolder", "ilsvrc", "caltech101", "caltech256", "folder")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of `convplat prepare` (DESIGN.md); defaults are AlexNet §2's 256x256 crops."""

    source: str = "data/imagenet"
    out: str = "shards/imagenet"
    layout: str = "auto"
    size: int = 256
    quality: int = 90
    shard_size: int = 1000
    seed: int = 0
    crop: bool = True
    address: str | None = None
    num_cpus: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check(
            self.layout in LAYOUT_CHOICES,
            f"--layout: expected one of {', '.join(LAYOUT_CHOICES)}, got {self.layout!r}",
        )
        _check(16 <= self.size <= 4096, f"--size: expected 16..4096 pixels, got {self.size}")
        _check(1 <= self.quality <= 100, f"--quality: expected 1..100, got {self.quality}")
        _check(self.shard_size >= 1, f"--shard-size: expected >= 1, got {self.shard_size}")
        _check(
            self.num_cpus is None or self.num_cpus >= 1,
            f"--num-cpus: expected >= 1, got {self.num_cpus}",
        )


OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("plateau", "multistep", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of `convplat train`; the defaults are AlexNet's recipe (AlexNet §5).

    ``batch_size`` is the global batch (the paper's 128), split evenly over the workers.
    Per-model recipes (convplat/training/recipes/*.toml) override these defaults; a
    ``--config`` TOML file overrides the recipe; flags given on the command line override both.
    """

    model: str = "alexnet"
    data: str = "shards/imagenet"
    out: str = "runs"
    run_name: str = ""
    epochs: int = 90
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 4
    plateau_threshold: float = 1e-3
    min_lr: float = 1e-6
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    lighting_std: float = 0.1
    input_scale: float = 1.0
    gpus: int = 0
    workers: int = 1
    cpus_per_worker: int = 0  # 0: share the cluster's CPUs evenly between the workers
    loader_workers: int = -1  # -1: one fewer than the worker's CPUs
    seed: int = 0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    keep_checkpoints: int = 3
    max_failures: int = 2
    shuffle_buffer: int = 1000
    limit_train_batches: int = 0  # 0: the whole epoch; >0: a smoke run of that many batches
    limit_val_batches: int = 0
    address: str | None = None
    progress: bool = True
    recipe: str = ""
    init: str = "paper"  # "paper" (the builders' published init) or "kaiming" (demo preset)

    def __post_init__(self) -> None:
        _check(
            self.init in ("paper", "kaiming"), f"init: expected paper or kaiming, got {self.init!r}"
        )
        _check(self.epochs >= 1, f"--epochs: expected >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"--batch-size: expected >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"--lr: expected > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, f"--momentum: expected 0..1, got {self.momentum}")
        _check(self.weight_decay >= 0, f"--weight-decay: expected >= 0, got {self.weight_decay}")
        _check(
            self.optimizer in OPTIMIZERS,
            f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        _check(
            self.schedule in SCHEDULES,
            f"schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        _check(self.gpus >= 0, f"--gpus: expected >= 0, got {self.gpus}")
        _check(self.workers >= 1, f"--workers: expected >= 1, got {self.workers}")
        _check(
            self.batch_size % self.world_size == 0,
            f"--batch-size: expected a multiple of the {self.world_size} workers, "
            f"got {self.batch_size}",
        )
        _check(
            self.keep_checkpoints >= 1,
            f"keep_checkpoints: expected >= 1, got {self.keep_checkpoints}",
        )
        _check(self.lighting_std >= 0, f"lighting_std: expected >= 0, got {self.lighting_std}")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))

    @property
    def world_size(self) -> int:
        """Number of Ray Train workers: one per GPU, or ``workers`` CPU workers."""
        return self.gpus if self.gpus > 0 else self.workers

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.world_size
