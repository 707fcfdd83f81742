"""Shards -> (images, labels, boxes) batches for localization: like ``training/data.py`` but
also reading each sample's ``json`` for its ground-truth boxes (in the prepared frame).

A sample's boxes are those of its own class (``box_labels``, when the reader recorded them,
else every box: ImageNet LOC files only box the image's class). Images come as the central
``S x S`` frame the mean image covers, so boxes of ``--no-crop`` shards are shifted into it
and clipped. Training skips samples without a box; evaluation keeps them (they count as
misses, as ILSVRC scores every image).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import simplejpeg
import torch
import webdataset as wds

from convplat.errors import DatasetError
from convplat.pipeline.shardset import (
    WITH_METADATA,
    assign_shards,
    read_manifest,
    read_shard_samples,
    split_shards,
)
from convplat.storage import resolve
from convplat.training.data import train_batches


@dataclass
class BoxBatch:
    """One batch: uint8 ``images (B, S, S, 3)``, int64 ``labels (B,)``, per-image float
    ``boxes`` ``[(K_i, 4)]`` in frame pixels (xyxy), and the sample ``keys``."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: list[torch.Tensor]
    keys: list[str]


def decode_sample(sample: dict, frame: int) -> tuple[np.ndarray, int, np.ndarray, str]:
    """Raw shard sample -> (frame image (S, S, 3) uint8, label, boxes (K, 4) float32, key)."""
    key = sample.get("__key__", "?")
    try:
        image = simplejpeg.decode_jpeg(sample["jpg"], colorspace="RGB")
        meta = json.loads(sample["json"]) if "json" in sample else {}
        label = int(sample["cls"])
    except (KeyError, ValueError) as exc:
        raise DatasetError(
            f"cannot read sample {key!r} of {sample.get('__url__')}: {exc}; "
            "expected jpg, cls and json written by `convplat prepare`"
        ) from None
    boxes = np.asarray(meta.get("boxes") or [], np.float32).reshape(-1, 4)
    box_labels = meta.get("box_labels") or []
    if len(box_labels) == len(boxes) and len(boxes):
        boxes = boxes[np.asarray(box_labels) == label]
    height, width = image.shape[:2]
    if height < frame or width < frame:
        raise DatasetError(f"sample {key!r}: {height}x{width} is smaller than the {frame} frame")
    if (height, width) != (frame, frame):  # --no-crop shards: the central frame, boxes shifted
        top, left = (height - frame) // 2, (width - frame) // 2
        image = image[top : top + frame, left : left + frame]
        boxes = (boxes - np.asarray([left, top, left, top], np.float32)).clip(0, frame)
        boxes = boxes[(boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)]
    return image, label, boxes, key


def _collate(decoded: list[tuple[np.ndarray, int, np.ndarray, str]]) -> BoxBatch:
    return BoxBatch(
        images=torch.from_numpy(np.stack([d[0] for d in decoded])),
        labels=torch.tensor([d[1] for d in decoded], dtype=torch.int64),
        boxes=[torch.from_numpy(d[2]) for d in decoded],
        keys=[d[3] for d in decoded],
    )


def boxed_count(shard_dir: str | os.PathLike, split: str) -> int:
    """Samples of ``split`` with at least one box, from ``index.parquet`` (0 if it is absent)."""
    import pyarrow.parquet as pq

    location = resolve(shard_dir)
    if not location.exists("index.parquet"):
        return 0
    with location.fs.open_input_file(location.join("index.parquet")) as handle:
        table = pq.read_table(handle, columns=["split", "boxes"])
    rows = table.to_pydict()
    return sum(1 for s, b in zip(rows["split"], rows["boxes"], strict=True) if s == split and b)


def train_box_batches(
    shard_dir: str | os.PathLike,
    *,
    batch_size: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 1000,
) -> tuple[Iterator[BoxBatch], int]:
    """One training epoch on one rank and its length (the same on every rank, for DDP).

    The rank's shards (dealt as in ``training/data.py``, shard order shuffled per epoch) are
    cycled, shuffled in a buffer seeded by ``(seed, epoch, rank)`` and filtered to samples
    with boxes; the epoch is ``boxed samples // (world_size * batch_size)`` full batches.
    """
    manifest = read_manifest(shard_dir)
    frame = int(manifest["size"])
    shards = split_shards(manifest, "train")
    count = boxed_count(shard_dir, "train")
    if count == 0:
        raise DatasetError(
            f"{resolve(shard_dir).uri}: no training sample has a box; localization needs "
            "boxes (ImageNet LOC / VOC annotations, or `convplat demo-data`)"
        )
    length = train_batches(count, batch_size, world_size)
    order = np.random.default_rng([seed, epoch, 1]).permutation(len(shards))
    tasks = assign_shards([shards[i] for i in order], world_size)[rank]
    location = resolve(shard_dir)
    state = int(np.random.SeedSequence([seed, epoch, rank, 3]).generate_state(1)[0])

    def cycled() -> Iterator[dict]:
        while True:
            produced = 0
            for task in tasks:
                for sample in read_shard_samples(location, task, WITH_METADATA):
                    produced += 1
                    yield sample
            if produced == 0:
                raise DatasetError(f"shards {[t.name for t in tasks]} hold no samples")

    def boxed(samples: Iterator[dict]) -> Iterator[tuple]:
        seen = 0
        for sample in samples:
            decoded = decode_sample(sample, frame)
            seen += 1
            if len(decoded[2]):
                seen = 0
                yield decoded
            elif seen > sum(t.samples for t in tasks):
                raise DatasetError(f"rank {rank}'s shards hold no sample with a box")

    shuffled = wds.shuffle(shuffle_buffer, initial=shuffle_buffer, seed=state)(cycled())
    stream = boxed(shuffled)

    def batches() -> Iterator[BoxBatch]:
        for _ in range(length):
            yield _collate(list(islice(stream, batch_size)))

    return batches(), length


def eval_box_batches(
    shard_dir: str | os.PathLike,
    split: str = "val",
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    limit: int = 0,
) -> Iterator[BoxBatch]:
    """Every sample of ``split`` once over all ranks, in shard order (``limit``: at most that
    many samples on this rank)."""
    manifest = read_manifest(shard_dir)
    frame = int(manifest["size"])
    tasks = assign_shards(split_shards(manifest, split), world_size)[rank]
    location = resolve(shard_dir)
    samples = (s for task in tasks for s in read_shard_samples(location, task, WITH_METADATA))
    if limit:
        samples = islice(samples, limit)
    while chunk := list(islice(samples, batch_size)):
        yield _collate([decode_sample(s, frame) for s in chunk])
