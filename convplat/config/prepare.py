"""`PrepareConfig`: every setting of `convplat prepare`."""

from __future__ import annotations

from dataclasses import dataclass

from convplat.config.validate import check, check_fields, choice

LAYOUT_CHOICES = ("auto", "imagefolder", "ilsvrc", "caltech101", "caltech256", "folder")


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
        check_fields(self)
        choice("--layout", self.layout, LAYOUT_CHOICES)
        check(16 <= self.size <= 4096, f"--size: expected 16..4096 pixels, got {self.size}")
        check(1 <= self.quality <= 100, f"--quality: expected 1..100, got {self.quality}")
        check(self.shard_size >= 1, f"--shard-size: expected >= 1, got {self.shard_size}")
        check(
            self.num_cpus is None or self.num_cpus >= 1,
            f"--num-cpus: expected >= 1, got {self.num_cpus}",
        )
