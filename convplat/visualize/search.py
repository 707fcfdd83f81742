"""The top-9 search over a validation split (ZFNet §4, Fig. 2), in this process or fanned out
over Ray tasks when the split is large.

Each Ray task streams one group of shards (a rank of the evaluation loader's shard split:
whole shards, every sample read once over all tasks) through the conv layers up to the chosen
layer and returns each map's top ``k``; the driver keeps the top ``k`` of those. Ties are
broken by sample key, so the result does not depend on how the shards were split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from convplat.cluster import RAY_MIN_IMAGES, use_ray
from convplat.config import EXECUTORS
from convplat.errors import ConfigError
from convplat.visualize.deconv import relu_index
from convplat.visualize.top import Activation, merge_tops, top_activations, top_of_maps


def val_batches(
    shards: str,
    size: int,
    batch_size: int,
    input_scale: float = 1.0,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    keys: bool = False,
    mean_rgb: Sequence[float] | None = None,
) -> Iterator[torch.Tensor | tuple[torch.Tensor, list[str]]]:
    """Validation images of ``shards`` as (B, 3, size, size) model inputs (centre crops, mean
    subtracted, scaled), with their sample keys when ``keys``; ``rank`` of ``world_size``
    reads its share of the shards only. ``mean_rgb`` replaces the shards' mean image by a
    per-channel mean (weights trained elsewhere: torchvision's)."""
    from convplat.pipeline.shardset import load_stats
    from convplat.training.augment import BatchTransform
    from convplat.training.data import eval_loader

    stats = dict(load_stats(shards))
    if mean_rgb is not None:
        stats["mean"] = np.broadcast_to(
            np.asarray(mean_rgb, np.float32), stats["mean"].shape
        ).copy()
    transform = BatchTransform.from_stats(stats, lighting_std=0.0, input_scale=input_scale).eval()
    loader = eval_loader(
        shards,
        "val",
        batch_size=batch_size,
        crop_size=size,
        mode="center",
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        keys=keys,
    )
    for batch in loader:
        images = transform(batch[0], batch[2], lighting=False)
        yield (images, batch[3]) if keys else images


def search_part(
    layers: nn.Module,
    shards: str,
    channels: list[int],
    *,
    size: int,
    input_scale: float,
    k: int,
    batch_size: int,
    rank: int,
    world_size: int,
    mean_rgb: Sequence[float] | None = None,
) -> dict[int, list[Activation]]:
    """The body of one Ray task (no Ray here): the top ``k`` of each map over share ``rank``
    of ``world_size`` of the validation shards, read in this process."""
    batches = val_batches(
        shards,
        size,
        batch_size,
        input_scale,
        rank=rank,
        world_size=world_size,
        num_workers=0,
        keys=True,
        mean_rgb=mean_rgb,
    )
    return top_of_maps(layers.eval(), batches, channels, k)


def check_executor(executor: str) -> None:
    """A user's ``--executor`` must be one of ``EXECUTORS`` (ConfigError otherwise)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")


def val_count(shards: str) -> tuple[int, int]:
    """(validation images, validation shards) that the manifest lists."""
    from convplat.pipeline.shardset import ShardSet

    listed = ShardSet.open(shards).shards("val")
    return sum(count for _, count in listed), len(listed)


def search_shards(
    model: nn.Module,
    layer: int,
    channels: list[int],
    shards: str,
    *,
    input_scale: float = 1.0,
    mean_rgb: Sequence[float] | None = None,
    k: int = 9,
    batch_size: int = 32,
    executor: str = "auto",
    ray_min_images: int = RAY_MIN_IMAGES,
    address: str | None = None,
    progress=None,
) -> tuple[dict[int, list[Activation]], str]:
    """The top ``k`` activations of each map in ``channels`` at conv ``layer`` over the
    validation split of ``shards``, strongest first, and the executor used (local or ray).

    ``executor``: ``local`` streams the shards here; ``ray`` runs one task per shard group;
    ``auto`` uses Ray from ``ray_min_images`` validation images (or with ``address``).
    ``progress``: an optional rich Progress to report finished shard groups on.
    ``mean_rgb``: a per-channel mean in place of the shards' mean image (see ``val_batches``).
    """
    check_executor(executor)
    count, groups = val_count(shards)
    size = model.input_size
    if not use_ray(executor, count, address, ray_min_images):
        batches = val_batches(shards, size, batch_size, input_scale, keys=True, mean_rgb=mean_rgb)
        return top_activations(model.eval(), batches, layer, channels, k), "local"
    layers = model.features[: relu_index(model, layer) + 1]
    spec = dict(size=size, input_scale=input_scale, k=k, batch_size=batch_size, mean_rgb=mean_rgb)
    return _search_ray(layers, shards, channels, spec, groups, address, progress), "ray"


def _search_ray(
    layers: nn.Module,
    shards: str,
    channels: list[int],
    spec: dict,
    groups: int,
    address: str | None,
    progress,
) -> dict[int, list[Activation]]:
    """Fan :func:`search_part` out: about two shard groups per CPU, whole shards each."""
    import ray

    from convplat.cluster import cluster_size, ensure_ray, fan_out

    ensure_ray(address)
    cpus, _ = cluster_size()
    tasks = max(1, min(groups, 2 * cpus))
    layers_ref = ray.put(layers)  # conv layers only: a few MB, not the fc weights
    jobs = (
        (r, (layers_ref, shards, channels), {"rank": r, "world_size": tasks, **spec})
        for r in range(tasks)
    )
    advance = (lambda: None) if progress is None else _advancer(progress, tasks)
    parts = []
    for _, part in fan_out(search_part, jobs, num_cpus=1):
        parts.append(part)
        advance()
    return merge_tops(parts, spec["k"])


def _advancer(progress, tasks: int):
    bar = progress.add_task("top activations (Ray tasks)", total=tasks, rate="")
    return lambda: progress.advance(bar, 1)
