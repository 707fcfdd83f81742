"""Detection data (OverFeat §5): whole images with all their boxes, window labels, the
negatives mined on the fly, and the pooled patches of the windows a training step uses.

A detector needs every object of an image, so its codec reads each sample's ``json`` too
(``boxes`` in the prepared frame's pixels, ``box_labels``); the streams are the shared ones
of :mod:`convplat.training.data` (shard plan, cycling, shuffling, loader processes,
exact-once evaluation).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace

import numpy as np
import simplejpeg
import torch
from torch import Tensor, nn

from convplat.errors import DatasetError
from convplat.localize.boxes import box_iou
from convplat.pipeline.shardset import WITH_METADATA, ShardSet
from convplat.training.data import ShardLoader, TrainLoader, eval_loader
from convplat.training.dense import (
    interleave,
    offset_count,
    offset_pool,
    rescale,
    scaled_size,
    window_boxes,
)

IGNORE = -1  # window label: neither object nor background (left out of the loss)


@dataclass(frozen=True)
class DetectionSample:
    """One image and every object in it: ``boxes`` (N, 4) xyxy float32 in the image's pixels,
    ``labels`` (N,) int64 class indices (N may be 0); ``index``: its position in the split
    (evaluation, manifest order; -1 in training)."""

    key: str
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray
    labels: np.ndarray
    index: int = -1


def _to_sample(raw: dict) -> DetectionSample:
    key = raw.get("__key__", "?")
    try:
        image = simplejpeg.decode_jpeg(raw["jpg"], colorspace="RGB")
        meta = json.loads(raw["json"])
    except (KeyError, ValueError) as exc:
        raise DatasetError(
            f"sample {key!r} of {raw.get('__url__')}: expected a jpg and a json with boxes "
            f"(shards written by `convplat prepare`): {exc}"
        ) from None
    boxes = np.asarray(meta.get("boxes") or [], dtype=np.float32).reshape(-1, 4)
    labels = meta.get("box_labels") or []
    if len(labels) != len(boxes):  # older shards: every box is of the image's class
        labels = [int(meta.get("label", int(raw.get("cls", b"0")))) for _ in range(len(boxes))]
    index = int(raw.get("__index__", -1))
    return DetectionSample(key, image, boxes, np.asarray(labels, dtype=np.int64), index)


class DetectionCodec:
    """The detection :class:`~convplat.training.data.SampleCodec`: every sample (boxes or
    not: an image without objects is all background) as a :class:`DetectionSample`; a batch
    is their list (whole images of any size)."""

    suffixes = WITH_METADATA

    def count(self, shard_set: ShardSet, split: str) -> int:
        return shard_set.count(split)

    def decode(self, sample: dict) -> DetectionSample:
        return _to_sample(sample)

    def collate(self, samples: list[DetectionSample], rng=None) -> list[DetectionSample]:
        return list(samples)


def train_detection_loader(
    shard_dir: str | os.PathLike,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    seed: int = 0,
    shuffle_buffer: int = 200,
) -> TrainLoader:
    """Lists of ``batch_size`` training samples for every epoch (``loader.epoch(e)``): the
    classification stream (shards dealt to (rank, loader worker) slots, cycled and shuffled
    per ``(seed, epoch)``), ``train_count // (world_size * batch_size)`` steps on every rank."""
    return TrainLoader(
        shard_dir,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        codec=DetectionCodec(),
    )


def eval_detection_loader(
    shard_dir: str | os.PathLike,
    split: str = "val",
    *,
    batch_size: int = 1,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    limit: int = 0,
) -> ShardLoader:
    """Every sample of ``split`` (``limit``: of its first ``limit``) exactly once over all
    ranks and loader workers, in lists of at most ``batch_size``."""
    return eval_loader(
        shard_dir,
        split,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        codec=DetectionCodec(),
        limit=limit,
    )


# --------------------------------------------------------------------------- window labels
def window_labels(
    windows: Tensor,
    boxes: Tensor,
    labels: Tensor,
    background: int,
    positive_iou: float = 0.5,
    negative_iou: float = 0.3,
) -> Tensor:
    """The training label of every window (output location) of one image at one scale.

    Rule: a window is an object of class c when its IoU with a ground-truth box of class c
    is at least ``positive_iou`` (the best such box wins) - the same criterion that makes the
    window's box a correct detection at evaluation (IoU >= 0.5), so a perfect window
    classifier would be a perfect detector on these windows. A window whose best IoU with
    every box is below ``negative_iou`` is ``background``; windows in between are
    ``IGNORE`` (they show a good part of an object, and calling them background would fight
    the classification pretraining).

    Args:
        windows: (L, 4) xyxy, in the same pixels as ``boxes``.
        boxes: (N, 4) xyxy ground truth; labels: (N,) their classes.

    Returns:
        (L,) int64 labels in ``0..background`` or ``IGNORE``.
    """
    out = torch.full((windows.shape[0],), background, dtype=torch.int64)
    if boxes.numel() == 0 or windows.numel() == 0:
        return out
    iou = box_iou(windows, boxes)  # (L, N)
    best, which = iou.max(dim=1)
    out[best >= negative_iou] = IGNORE
    positive = best >= positive_iou
    out[positive] = labels.to(torch.int64)[which[positive]]
    return out


def select_windows(
    targets: Tensor,
    scores: Tensor,
    background: int,
    random_negatives: int,
    hard_negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices of one image's windows that enter the loss (OverFeat §5: negatives on the fly).

    Every positive window; of the background windows, the ``hard_negatives`` "most offending"
    ones (highest best non-background score, i.e. the false alarms the detector would make
    now) and ``random_negatives`` others drawn uniformly from the rest.

    Args:
        targets: (L,) from :func:`window_labels`; scores: (L,) the current best
            non-background score of each window (any monotone score: logit or probability).
    """
    positives = torch.nonzero((targets >= 0) & (targets != background)).flatten()
    negatives = torch.nonzero(targets == background).flatten()
    hard = negatives[scores[negatives].argsort(descending=True, stable=True)[:hard_negatives]]
    rest = negatives[~torch.isin(negatives, hard)]
    draw = torch.randperm(rest.numel(), generator=generator)[:random_negatives]
    return torch.cat([positives, hard, rest[draw]])


# --------------------------------------------------------------------------- windows
def whole_image_input(image: np.ndarray, rgb_mean: Tensor, input_scale: float, device) -> Tensor:
    """uint8 (H, W, 3) -> float (3, H, W): minus the per-channel mean, times ``input_scale``.

    Whole images at other scales do not line up with the 256x256 per-pixel mean image, so
    detection subtracts its per-channel average (as dense evaluation does).
    """
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float()
    return (x - rgb_mean.to(device).view(3, 1, 1)) * input_scale


@torch.no_grad()
def score_maps(model: nn.Module, images: Tensor, stride: str) -> tuple[Tensor, Tensor] | None:
    """Pooled maps and interleaved logits of (B, 3, H, W) normalised images.

    Returns ``(pooled (n*n, B, C, h, w), logits (B, K, h', w'))`` with the classifier in
    eval mode, or None when the image is too small for one window at every offset.
    """
    pooled = offset_pool(model, model.forward_features(images, pool=False), stride)
    offsets, b, c, h, w = pooled.shape
    if h < model.feature_size or w < model.feature_size:
        return None
    classifier = model.classifier_as_conv()
    training = classifier.training
    classifier.eval()
    logits = classifier(pooled.reshape(offsets * b, c, h, w))
    classifier.train(training)
    return pooled, interleave(logits.view(offsets, b, *logits.shape[1:]))


def _patches(pooled: Tensor, image: int, flat: Tensor, width: int, n: int, s: int) -> Tensor:
    """The s x s pooled patch under each interleaved location ``flat`` (= Y * width + X)."""
    # Interleaved (Y, X) is offset (Y % n, X % n) at pooled cell (Y // n, X // n) (interleave).
    ys, xs = (flat // width).tolist(), (flat % width).tolist()
    if not ys:
        return pooled.new_zeros((0, pooled.shape[2], s, s))
    return torch.stack(
        [
            pooled[(y % n) * n + (x % n), image, :, y // n : y // n + s, x // n : x // n + s]
            for y, x in zip(ys, xs, strict=True)
        ]
    )


def _scaled_groups(images: list[Tensor], scale: int):
    """Images rescaled to ``scale``, batched by equal size: (indices, batch, (fy, fx))."""
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, image in enumerate(images):
        height, width = image.shape[-2:]
        groups.setdefault((height, width, *scaled_size(height, width, scale)), []).append(i)
    for (height, width, sh, sw), indices in groups.items():
        batch = torch.stack([rescale(images[i], (sh, sw)) for i in indices])
        yield indices, batch, (sh / height, sw / width)


def to_frame(windows: Tensor, factors: tuple[float, float]) -> Tensor:
    fy, fx = factors
    return windows / torch.tensor([fx, fy, fx, fy], dtype=windows.dtype)


def training_windows(
    model: nn.Module,
    images: list[Tensor],
    samples: list[DetectionSample],
    *,
    background: int,
    scales: tuple[int, ...],
    stride: str,
    positive_iou: float = 0.5,
    negative_iou: float = 0.3,
    random_negatives: int = 2,
    hard_negatives: int = 2,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Pooled patches (L, C, s, s) and labels (L,) of the windows that enter this step's loss.

    For every image and scale: the window labels (:func:`window_labels`), then every positive
    and the negatives :func:`select_windows` mines. Mining reads the current detector's scores
    on every window (no gradient); only the chosen windows then go through the classifier with
    gradients, in its fc form (``model.forward_head`` on the patches), which equals the conv
    form at those locations.
    """
    n, s = offset_count(model, stride), model.feature_size
    patches, targets = [], []
    for scale in scales:
        for indices, batch, factors in _scaled_groups(images, scale):
            maps = score_maps(model, batch, stride)
            if maps is None:
                continue
            pooled, logits = maps
            height, width = logits.shape[-2:]
            windows = to_frame(window_boxes(model, height, width, stride), factors)
            offending = logits.float().softmax(dim=1)[:, :background].amax(dim=1)  # (b, h', w')
            for j, i in enumerate(indices):
                sample = samples[i]
                labels = window_labels(
                    windows,
                    torch.from_numpy(sample.boxes),
                    torch.from_numpy(sample.labels),
                    background,
                    positive_iou,
                    negative_iou,
                )
                chosen = select_windows(
                    labels,
                    offending[j].flatten().cpu(),
                    background,
                    random_negatives,
                    hard_negatives,
                    generator,
                )
                patches.append(_patches(pooled, j, chosen.to(pooled.device), width, n, s))
                targets.append(labels[chosen])
    if not patches:
        raise DatasetError(
            f"no scale in {scales} holds a {model.input_size}x{model.input_size} window; "
            "use larger --scales"
        )
    return torch.cat(patches), torch.cat(targets)


def flip_sample(sample: DetectionSample) -> DetectionSample:
    """The mirror image with its boxes mirrored (training augmentation)."""
    width = sample.image.shape[1]
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = width - sample.boxes[:, [2, 0]]
    return replace(sample, image=sample.image[:, ::-1], boxes=boxes)
