"""Shards -> (images, labels, boxes) batches for localization: the shared shard streams of
``training/data.py`` (shard plan, cycling, shuffling, loader processes, exact-once
evaluation) with a codec that also reads each sample's ``json`` for its ground-truth boxes.

A sample's boxes are those of its own class (``box_labels``, when the reader recorded them,
else every box: ImageNet LOC files only box the image's class). Images come as the central
``S x S`` frame the mean image covers, so boxes of ``--no-crop`` shards are shifted into it
and clipped. Training skips samples without a box; evaluation keeps them (they count as
misses, as ILSVRC scores every image).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

import numpy as np
import simplejpeg
import torch

from convplat.errors import DatasetError
from convplat.pipeline.shardset import WITH_METADATA, ShardSet
from convplat.storage import resolve
from convplat.training.data import (
    ShardLoader,
    TrainLoader,
    eval_loader,
    new_uint8_batch,
)


@dataclass
class BoxBatch:
    """One batch: uint8 ``images (B, S, S, 3)``, int64 ``labels (B,)``, per-image float
    ``boxes`` ``[(K_i, 4)]`` in frame pixels (xyxy), the sample ``keys`` and (evaluation) their
    ``indices``, positions in the split (manifest order; -1 in training)."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: list[torch.Tensor]
    keys: list[str]
    indices: list[int] = field(default_factory=list)

    def pin_memory(self) -> BoxBatch:
        """The batch with its images in page-locked memory (the DataLoader's ``pin_memory``
        calls this), for asynchronous copies to the GPU as in classification training."""
        return replace(self, images=self.images.pin_memory())


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


class BoxCodec:
    """The localization :class:`~convplat.training.data.SampleCodec`: frames with their boxes
    into :class:`BoxBatch`; ``training`` leaves out (and does not count) boxless samples."""

    suffixes = WITH_METADATA

    def __init__(self, frame: int, training: bool) -> None:
        self.frame, self.training = frame, training

    def count(self, shard_set: ShardSet, split: str) -> int:
        if not self.training:
            return shard_set.count(split)
        count = boxed_count(shard_set.uri, split)
        if count == 0:
            raise DatasetError(
                f"{shard_set.uri}: no training sample has a box; localization needs "
                "boxes (ImageNet LOC / VOC annotations, or `convplat demo-data`)"
            )
        return count

    def decode(self, sample: dict) -> tuple | None:
        image, label, boxes, key = decode_sample(sample, self.frame)
        if self.training and not len(boxes):
            return None
        return image, label, boxes, key, int(sample.get("__index__", -1))

    def collate(self, decoded: list[tuple], rng=None) -> BoxBatch:
        images, pixels = new_uint8_batch((len(decoded), self.frame, self.frame, 3))
        for i, item in enumerate(decoded):
            pixels[i] = item[0]
        return BoxBatch(
            images=images,
            labels=torch.tensor([d[1] for d in decoded], dtype=torch.int64),
            boxes=[torch.from_numpy(d[2]) for d in decoded],
            keys=[d[3] for d in decoded],
            indices=[d[4] for d in decoded],
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


def train_box_loader(
    shard_dir: str | os.PathLike,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    pin_memory: bool = False,
) -> TrainLoader:
    """Training :class:`BoxBatch` es for every epoch (``loader.epoch(e)``) on one rank.

    The classification stream (:class:`~convplat.training.data.TrainLoader`: shards dealt to
    (rank, loader worker) slots, cycled and shuffled per ``(seed, epoch)``) filtered to samples
    with boxes; every rank gets ``boxed samples // (world_size * batch_size)`` full batches.
    """
    shard_set = ShardSet.open(shard_dir)
    return TrainLoader(
        shard_set.uri,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        pin_memory=pin_memory,
        codec=BoxCodec(shard_set.size, training=True),
    )


def eval_box_loader(
    shard_dir: str | os.PathLike,
    split: str = "val",
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    limit: int = 0,
    pin_memory: bool = False,
) -> ShardLoader:
    """Every sample of ``split`` (``limit``: of its first ``limit``) exactly once over all
    ranks and loader workers, as :class:`BoxBatch` es (boxless samples included)."""
    shard_set = ShardSet.open(shard_dir)
    return eval_loader(
        shard_set.uri,
        split,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        codec=BoxCodec(shard_set.size, training=False),
        limit=limit,
        pin_memory=pin_memory,
    )
