"""`PrepareConfig`: every setting of `convplat prepare`."""

from __future__ import annotations

from dataclasses import dataclass

from convplat.config.shared import EXECUTORS
from convplat.config.validate import check, check_fields, choice

LAYOUT_CHOICES = ("auto", "imagefolder", "ilsvrc", "caltech101", "caltech256", "folder")
# Decompression bombs: a header that claims more pixels than Pillow's own limit is refused
# before decoding (every real ImageNet, Caltech and VOC image is far below it), and so is a
# file over 64 MiB before it is read.
MAX_PIXELS = 89_478_485
MAX_BYTES = 64 * 1024 * 1024
RAY_MIN_IMAGES = 2000  # the one default of every --ray-min-images (convplat.cluster)


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
    overwrite: bool = False  # write into a non-empty directory convplat did not create
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES
    executor: str = "auto"  # auto: Ray with --address or from ray_min_images images
    ray_min_images: int = RAY_MIN_IMAGES

    def __post_init__(self) -> None:
        check_fields(self)
        choice("--layout", self.layout, LAYOUT_CHOICES)
        check(16 <= self.size <= 4096, f"--size: expected 16..4096 pixels, got {self.size}")
        check(1 <= self.quality <= 100, f"--quality: expected 1..100, got {self.quality}")
        check(self.shard_size >= 1, f"--shard-size: expected >= 1, got {self.shard_size}")
        choice("--executor", self.executor, EXECUTORS)
        for name in ("max_pixels", "max_bytes", "ray_min_images"):
            value = getattr(self, name)
            check(value >= 1, f"--{name.replace('_', '-')}: expected >= 1, got {value}")
        check(
            self.num_cpus is None or self.num_cpus >= 1,
            f"--num-cpus: expected >= 1, got {self.num_cpus}",
        )
