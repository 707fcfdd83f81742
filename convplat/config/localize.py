"""The settings of `convplat localize train` and `convplat detect train`: frozen dataclasses
that cross into Ray Train as plain dicts and are recorded in each output's config.json, with
the option names OverFeat's localization and detection share."""

from __future__ import annotations

from dataclasses import dataclass

from convplat.config.shared import OPTIMIZERS, WEIGHTS_CHOICES, WorkerScale
from convplat.config.validate import check, check_fields, choice

STRIDES = ("fine", "coarse")  # OverFeat §3.3: offset max-pooling (fine) or not (coarse)
PAPER_SCALES: tuple[int, ...] = (245, 281, 317, 389, 425, 461)  # O Table 5: 6 scales
HIDDEN = (4096, 1024)  # O §4: "2 fully-connected hidden layers of size 4096 and 1024"
TRAINABLE = ("classifier", "output")  # detection: fc6-fc8, or only the output layer


@dataclass(frozen=True)
class LocalizeConfig(WorkerScale):
    """Settings of `convplat localize train`; crosses into Ray Train as a plain dict.

    The paper gives no optimiser settings for the regressor; Adam 1e-4 learns the demo set
    in a few CPU epochs. ``min_inside`` is the share of a box that must lie in a window for
    that window to train on it (O §4: 50%).
    """

    run: str
    data: str = ""  # "": the run's shards
    out: str = ""  # "": <run>/localize
    weights: str = "final"
    per_class: bool = False  # the paper's PCR; the winning entry used SCR (single-class)
    scales: tuple[int, ...] = PAPER_SCALES
    stride: str = "fine"
    hidden: tuple[int, ...] = HIDDEN  # two widths (checked below)
    min_inside: float = 0.5
    flip: bool = True
    epochs: int = 3
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    gpus: int = 0
    workers: int = 1
    cpus_per_worker: int = 0
    loader_workers: int = -1  # -1: one fewer than the worker's CPUs
    seed: int = 0
    limit_train_batches: int = 0
    limit_val_batches: int = 0
    keep_checkpoints: int = 2
    max_failures: int = 2
    overwrite: bool = False
    address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        check(bool(self.scales), f"--scales: expected at least one scale, got {self.scales}")
        check(min(self.scales, default=1) >= 1, f"--scales: expected > 0, got {self.scales}")
        choice("--stride", self.stride, STRIDES)
        check(
            len(self.hidden) == 2 and min(self.hidden) >= 1,
            f"--hidden: expected two widths, got {self.hidden}",
        )
        check(0 < self.min_inside <= 1, f"min_inside: expected 0..1, got {self.min_inside}")
        check(self.epochs >= 1, f"--epochs: expected >= 1, got {self.epochs}")
        choice("--optimizer", self.optimizer, OPTIMIZERS)
        choice("--weights", self.weights, WEIGHTS_CHOICES)
        self.check_run_settings()


@dataclass(frozen=True)
class DetectConfig(WorkerScale):
    """Settings of `convplat detect train` (recorded in the detection run's config.json).

    ``run`` is the classification run whose conv layers are frozen and whose classifier
    starts the detector; ``scales`` are shorter image sides in pixels; ``batch_size`` is the
    global number of images per step, split over the workers.
    """

    run: str
    data: str = ""  # shards; "" = the classification run's
    out: str = "runs"
    run_name: str = ""
    weights: str = "final"
    scales: tuple[int, ...] = (256, 384)
    stride: str = "coarse"
    trainable: str = "classifier"
    epochs: int = 2
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    positive_iou: float = 0.5
    negative_iou: float = 0.3
    random_negatives: int = 2
    hard_negatives: int = 2
    flip: bool = True
    gpus: int = 0
    workers: int = 1
    cpus_per_worker: int = 0
    loader_workers: int = -1  # -1: one fewer than the worker's CPUs
    seed: int = 0
    keep_checkpoints: int = 1
    max_failures: int = 2
    shuffle_buffer: int = 200
    limit_train_batches: int = 0
    address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        choice("--stride", self.stride, STRIDES)
        choice("--trainable", self.trainable, TRAINABLE)
        choice("--optimizer", self.optimizer, OPTIMIZERS)
        choice("--weights", self.weights, WEIGHTS_CHOICES)
        check(
            bool(self.scales) and min(self.scales) > 0,
            f"--scales: expected sides > 0, got {self.scales}",
        )
        check(self.epochs >= 1, f"--epochs: expected >= 1, got {self.epochs}")
        check(
            0 <= self.negative_iou <= self.positive_iou <= 1,
            "expected 0 <= --negative-iou <= --positive-iou <= 1, "
            f"got {self.negative_iou} and {self.positive_iou}",
        )
        check(
            min(self.random_negatives, self.hard_negatives) >= 0,
            "--random-negatives and --hard-negatives: expected >= 0",
        )
        self.check_run_settings()
