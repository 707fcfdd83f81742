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
