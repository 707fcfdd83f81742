"""`TransferConfig`: every setting of `convplat transfer`, validated once, recorded in config.json.

Defaults follow ZFNet §5.2 (PAPERS.md §2.6): frozen layers 1-7 (``fc7``), a new softmax per
split, 5 splits, up to 50 test images per class, and the paper's train sizes per dataset
(Caltech-101: 15 and 30 per class; Caltech-256: 15, 30, 45 and 60). PASCAL VOC 2012 (§5.3,
Table 6) has a fixed train/val split instead, so the split settings do not apply to it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from convplat.config.shared import EXECUTORS
from convplat.config.validate import as_tuple, check, check_device, check_fields, choice
from convplat.errors import ConfigError

DATASETS = ("caltech101", "caltech256", "voc2012")  # plus "folder:PATH"
MODES = ("head", "scratch", "full")
CUTS = ("fc7", "fc6", "conv5")
AUGMENTS = ("none", "flip")
HEAD_OPTIMIZERS = ("lbfgs", "sgd")
VOC_LOSSES = ("sigmoid", "softmax")
VOC_ROOT = os.path.join("data", "VOCdevkit", "VOC2012")

# ZFNet §5.2: Caltech-101 after Fei-Fei et al. (15 or 30 per class), Caltech-256 after Griffin
# et al. (15, 30, 45, 60). A plain folder gets Caltech-101's.
DEFAULT_TRAIN_PER_CLASS = {
    "caltech101": (15, 30),
    "caltech256": (15, 30, 45, 60),
    "folder": (15, 30),
    "voc2012": (),  # the devkit's train/val split
}
DEFAULT_WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)


def _no_duplicates(values: tuple, flag: str) -> None:
    check(len(set(values)) == len(values), f"{flag}: expected distinct values, got {values}")


@dataclass(frozen=True)
class TransferConfig:
    """Settings of `convplat transfer DATASET` (DESIGN.md, docs/transfer.md).

    Tuple fields also accept a comma-separated string (``modes="head,scratch"``), so the CLI
    can pass option text through. ``train_per_class=()`` means the paper's sizes for the
    dataset; after construction it holds the resolved sizes.
    """

    dataset: str = "caltech101"  # caltech101 | caltech256 | voc2012 | folder:PATH
    data: str | None = None  # default data/<dataset>, data/VOCdevkit/VOC2012, PATH of folder:
    checkpoint: str | None = None  # run directory or a .safetensors file inside one
    runs: str = "runs"  # where the newest ImageNet run is looked for
    out: str | None = None  # where runs/transfer-<dataset>-<stamp>/ goes (default: runs)
    run_name: str = ""
    modes: tuple[str, ...] = ("head",)
    cuts: tuple[str, ...] = ("fc7",)
    train_per_class: tuple[int, ...] = ()
    test_per_class: int = 50
    splits: int = 5
    seed: int = 0
    background: bool = False  # keep BACKGROUND_Google / 257.clutter as a class
    augment: str = "none"  # "flip": also the mirrored centre crop (train: 2 views; test: mean)
    # The softmax head (mode head): multinomial logistic regression on standardised features.
    head_optimizer: str = "lbfgs"
    weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS  # L2 grid, chosen on a held-out part
    holdout: float = 0.2  # fraction of each class's train images held out to choose it
    head_iters: int = 200  # L-BFGS iterations (lbfgs) or epochs (sgd)
    # voc2012 (multi-label): per-class sigmoids with binary cross-entropy, or one softmax over
    # the 20 classes against the image's present classes (ZFNet Table 6's "20-way softmax").
    voc_loss: str = "sigmoid"
    # Modes scratch and full: end-to-end training with Adam, random crops and flips.
    epochs: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    # Feature extraction.
    extract_batch_size: int = 32
    cache: bool = True
    cache_dir: str | None = None  # default <runs>/.cache
    executor: str = "auto"  # auto: Ray tasks above ray_min_images images (or with --address)
    ray_min_images: int = 2000
    address: str | None = None
    device: str | None = None  # cpu, cuda, cuda:1; default: cuda when present
    progress: bool = True

    def __post_init__(self) -> None:
        kind = self.dataset_kind
        if kind == "folder":
            check(
                self.data is None,
                "--data: expected no --data with folder:PATH (the path is the dataset), "
                f"got {self.data!r}",
            )
        self._set("modes", as_tuple(self.modes, "--mode", str))
        self._set("cuts", as_tuple(self.cuts, "--cut", str))
        self._set("train_per_class", as_tuple(self.train_per_class, "--train-per-class", int))
        self._set("weight_decays", as_tuple(self.weight_decays, "--weight-decays", float))
        check_fields(self)
        check(
            bool(self.modes) and all(m in MODES for m in self.modes),
            f"--mode: expected one or more of {', '.join(MODES)} (comma-separated), "
            f"got {','.join(self.modes)!r}",
        )
        _no_duplicates(self.modes, "--mode")
        check(
            bool(self.cuts) and all(c in CUTS for c in self.cuts),
            f"--cut: expected one or more of {', '.join(CUTS)} (comma-separated), "
            f"got {','.join(self.cuts)!r}",
        )
        _no_duplicates(self.cuts, "--cut")
        if not self.train_per_class:
            self._set("train_per_class", DEFAULT_TRAIN_PER_CLASS[kind])
        check(
            all(k >= 1 for k in self.train_per_class),
            f"--train-per-class: expected integers >= 1, got {self.train_per_class}",
        )
        _no_duplicates(self.train_per_class, "--train-per-class")
        check(
            self.test_per_class >= 1, f"--test-per-class: expected >= 1, got {self.test_per_class}"
        )
        check(self.splits >= 1, f"--splits: expected >= 1, got {self.splits}")
        check(self.seed >= 0, f"--seed: expected >= 0, got {self.seed}")
        choice("--augment", self.augment, AUGMENTS)
        choice("--head-optimizer", self.head_optimizer, HEAD_OPTIMIZERS)
        check(
            bool(self.weight_decays) and all(w >= 0 for w in self.weight_decays),
            f"--weight-decays: expected one or more numbers >= 0, got {self.weight_decays}",
        )
        check(0 <= self.holdout < 1, f"--holdout: expected 0 <= fraction < 1, got {self.holdout}")
        check(self.head_iters >= 1, f"--head-iters: expected >= 1, got {self.head_iters}")
        choice("--voc-loss", self.voc_loss, VOC_LOSSES)
        if kind == "voc2012":
            check(
                not self.train_per_class,
                "--train-per-class: expected none with voc2012 (the devkit's fixed train/val "
                f"split is used), got {self.train_per_class}",
            )
            check(
                self.head_optimizer == "lbfgs",
                "--head-optimizer: expected lbfgs with voc2012 (multi-label heads are solved "
                f"with L-BFGS), got {self.head_optimizer!r}",
            )
            check(not self.background, "--background: expected none with voc2012")
        check(self.epochs >= 1, f"--epochs: expected >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"--batch-size: expected >= 1, got {self.batch_size}")
        check(self.lr > 0, f"--lr: expected > 0, got {self.lr}")
        check(
            self.extract_batch_size >= 1,
            f"--extract-batch-size: expected >= 1, got {self.extract_batch_size}",
        )
        choice("--executor", self.executor, EXECUTORS)
        check(
            self.ray_min_images >= 1, f"--ray-min-images: expected >= 1, got {self.ray_min_images}"
        )
        check_device(self.device)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    @property
    def dataset_kind(self) -> str:
        """``caltech101``, ``caltech256``, ``voc2012`` or ``folder``."""
        if self.dataset in DATASETS:
            return self.dataset
        if self.dataset.startswith("folder:") and self.dataset[len("folder:") :].strip():
            return "folder"
        raise ConfigError(
            "DATASET: expected caltech101, caltech256, voc2012 or folder:PATH, "
            f"got {self.dataset!r}"
        )

    @property
    def root(self) -> str:
        """The dataset directory to read."""
        if self.dataset_kind == "folder":
            return self.dataset[len("folder:") :].strip()
        if self.dataset_kind == "voc2012":
            return self.data or VOC_ROOT
        return self.data or os.path.join("data", self.dataset)

    @property
    def dataset_slug(self) -> str:
        """A filesystem-safe dataset name for the run directory (``folder-<basename>``)."""
        if self.dataset_kind != "folder":
            return self.dataset
        base = os.path.basename(os.path.normpath(self.root)) or "folder"
        return "folder-" + (re.sub(r"[^A-Za-z0-9_.-]", "_", base) or "folder")

    @property
    def out_dir(self) -> str:
        return self.out or self.runs

    @property
    def cache_path(self) -> str:
        return self.cache_dir or os.path.join(self.runs, ".cache")
