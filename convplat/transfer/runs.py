"""What every transfer run (Caltech/folder in ``transfer.py``, VOC in ``voc.py``) shares: the
ImageNet mean image it preprocesses with, its run directory, its ``config.json`` record, the
opening of its ``results.json`` and the one call that gathers its features."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import numpy as np
import torch

from convplat.config import TransferConfig
from convplat.storage import Location, resolve
from convplat.transfer.checkpoint import Checkpoint
from convplat.transfer.gather import DatasetFeatures, gather


def load_mean(checkpoint: Checkpoint) -> tuple[np.ndarray, int]:
    """The ImageNet mean image the checkpoint was trained with, and the shards' JPEG quality."""
    return checkpoint.mean_and_quality()


def run_location(config: TransferConfig) -> Location:
    """``<out>/<run_name>``, or a new ``<out>/transfer-<dataset>-<stamp>[-N]`` (created)."""
    out = resolve(config.out_dir)
    name = config.run_name or f"transfer-{config.dataset_slug}-{datetime.now():%Y%m%d-%H%M%S}"
    base, n = name, 1
    while not config.run_name and out.child(name).exists("config.json"):  # two in one second
        n += 1
        name = f"{base}-{n}"
    location = out.child(name)
    location.fs.create_dir(location.path, recursive=True)
    return location


def gather_features(
    config: TransferConfig,
    listing,
    checkpoint: Checkpoint,
    mean: np.ndarray,
    quality: int,
    cuts: tuple[str, ...],
    progress,
) -> DatasetFeatures:
    """Features at ``cuts`` of every image of ``listing`` (and the JPEGs, when a mode trains
    the network), as ``config`` asks: flips, cache, executor, batch and device."""
    return gather(
        listing,
        checkpoint,
        mean,
        cuts=cuts,
        flip=config.augment == "flip",
        need_jpegs=any(m in ("scratch", "full") for m in config.modes),
        quality=quality,
        cache_dir=config.cache_path if config.cache else None,
        executor=config.executor,
        ray_min_images=config.ray_min_images,
        address=config.address,
        batch_size=config.extract_batch_size,
        device=config.device,
        progress=progress,
    )


@contextmanager
def torch_seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block under torch seed ``seed``, restoring torch's generators afterwards.

    Training a network draws its dropout masks from torch's global generator, whose state
    depends on whatever ran before in the process (a cold feature cache builds a model, a warm
    one does not), so without this the same ``--seed`` gave different numbers run to run.
    """
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def run_record(config, root: str, listing, checkpoint, names: list[str]) -> dict:
    """Every transfer run's config.json: the settings, the data read and the weights used."""
    return {
        **dataclasses.asdict(config),
        "root": os.path.abspath(root),
        "layout": listing.layout,
        "checkpoint_file": checkpoint.file,
        "checkpoint_sha256": checkpoint.sha256,
        "model": checkpoint.model,
        "input_scale": checkpoint.input_scale,
        "mean_image": checkpoint.data,
        "classes": names,
    }


def result_header(config, root: str, listing, run, checkpoint, names: list[str], data) -> dict:
    """The opening of every transfer's results.json: what was read, with which weights."""
    return {
        "dataset": config.dataset,
        "root": os.path.abspath(root),
        "layout": listing.layout,
        "run_dir": run.uri,
        "checkpoint": {
            "run": checkpoint.run_dir,
            "file": checkpoint.file,
            "model": checkpoint.model,
            "sha256": checkpoint.sha256,
        },
        "classes": names,
        "images": int(len(data.kept)),
    }
