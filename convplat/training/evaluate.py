"""`convplat evaluate RUN`: top-1/top-5 error of a trained run, centre, ten-crop or dense.

Runs in the calling process (one device); every validation sample is counted exactly once.
Dense mode (OverFeat §3.3, ``convplat.training.dense``) reads whole images at full resolution:
by default from the raw dataset tree the shards were prepared from (``source="raw"``), or
from the shards themselves when they were prepared large enough (``--size`` >= the largest
scale, ideally ``--no-crop`` to keep the paper's whole field of view).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from convplat.errors import ConfigError, DatasetError, ImageDecodeError
from convplat.storage import resolve
from convplat.training.checkpoints import load_run_model, write_json

MODES = ("center", "ten-crop", "dense")
SOURCES = ("raw", "shards")


def evaluate(
    run: str,
    mode: str = "center",
    data: str | None = None,
    split: str = "val",
    batch_size: int = 64,
    weights: str = "final",
    num_workers: int | None = None,
    device: str | None = None,
    *,
    scales: str | Sequence = "paper",
    stride: str = "fine",
    flip: bool = True,
    source: str = "raw",
    progress: bool = True,
) -> dict:
    """Top-1/top-5 error of ``run`` on ``split`` of its shards (or ``data``).

    ``center``: the central crop of the model's input size; ``ten-crop``: four corners and
    the centre plus their mirror images, softmax outputs averaged (AlexNet §4.1); ``dense``:
    OverFeat's multi-scale dense scores at ``scales`` (shorter sides or H x W, see
    :func:`convplat.training.dense.parse_scales`) with ``stride`` fine|coarse offset pooling
    and ``flip``, from ``source`` (``raw``: the tree the shards were prepared from, ``shards``:
    the shards, or a dataset directory). Dense mode normalises with the per-channel mean
    (``rgb_mean`` of stats.npz): the 256x256 per-pixel mean image has no counterpart at other
    sizes; it scores one image (and its mirror) per pass, so ``batch_size`` does not apply.
    ``num_workers``: decoding processes for center and ten-crop (None or -1: on a GPU one
    fewer than the CPUs, at most 8, as in training; on the CPU none, see
    :func:`eval_loader_workers`; 0: decode in this process).
    Writes ``eval-<mode>-<split>.json`` into the run directory and returns the metrics.
    """
    from convplat.pipeline.shardset import load_stats
    from convplat.training.augment import BatchTransform, TenCrop
    from convplat.training.data import eval_loader
    from convplat.training.loop import evaluate_batches

    if mode not in MODES:
        raise ConfigError(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if num_workers is not None and num_workers < -1:
        raise ConfigError(f"--loader-workers: expected >= -1, got {num_workers}")
    if mode == "dense":  # before the model is loaded: a typo fails at once
        from convplat.training.dense import STRIDES, parse_scales

        scales = parse_scales(scales)
        if stride not in STRIDES:
            raise ConfigError(f"--stride: expected one of {', '.join(STRIDES)}, got {stride!r}")
        if source not in SOURCES and not os.path.isdir(source):
            raise ConfigError(
                f"--source: expected raw, shards or a dataset directory, got {source!r}"
            )
    model, config = load_run_model(run, weights)
    shards = data or config["data"]
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num_workers = eval_loader_workers(num_workers, target)
    model.to(target)
    stats = load_stats(shards)
    if mode == "dense":
        metrics = _evaluate_dense(
            model, config, shards, stats, split, target, scales, stride, flip, source, progress
        )
        return _write_result(run, mode, split, shards, weights, metrics)
    crop = model.input_size
    transform = BatchTransform.from_stats(
        stats, lighting_std=0.0, input_scale=config["input_scale"]
    )
    crops = 1
    if mode == "ten-crop":
        transform, crops = TenCrop(transform, crop), 10
    batches = eval_loader(
        shards,
        split,
        batch_size=batch_size,
        rank=0,
        world_size=1,
        num_workers=num_workers,
        crop_size=crop,
        mode=mode,
        pin_memory=target.type == "cuda",  # async host-to-device copies, as in training
    )
    metrics = evaluate_batches(model, batches, transform.to(target), target, crops_per_image=crops)
    return _write_result(run, mode, split, shards, weights, metrics)


def eval_loader_workers(requested: int | None, device: torch.device) -> int:
    """Decoding processes for evaluation: ``requested`` when given (>= 0); by default (None,
    -1) one fewer than the CPUs on a GPU, whose forward pass leaves the CPUs to decoding, and
    none on the CPU, where the forward pass dominates and already uses every core (the demo
    run on 2 CPUs: the same times with and without a loader process, benchmarks/RESULTS.md)."""
    from convplat.training.data import default_num_workers

    if requested is not None and requested >= 0:
        return requested
    return default_num_workers() if device.type == "cuda" else 0


def _write_result(run: str, mode: str, split: str, shards: str, weights: str, metrics: dict):
    result = {
        "run": run,
        "mode": mode,
        "split": split,
        "data": shards,
        "weights": weights,
        **metrics,
    }
    write_json(resolve(run), f"eval-{mode}-{split}.json", result)
    return result


# --------------------------------------------------------------------------- dense mode
def _evaluate_dense(
    model, config, shards, stats, split, device, scales, stride, flip, source, progress
) -> dict:
    """OverFeat §3.3 scores per image (``dense_scores``), then top-1/top-5 over the split."""
    from convplat.pipeline.shardset import read_manifest
    from convplat.progress import progress_bar
    from convplat.training.dense import dense_scores, parse_scales
    from convplat.training.loop import topk_correct

    scale_list = parse_scales(scales)
    manifest = read_manifest(shards)
    mean = torch.as_tensor(np.asarray(stats["rgb_mean"], np.float32), device=device)
    input_scale = float(config.get("input_scale", 1.0))
    images, count, origin = _dense_images(manifest, shards, split, source, scale_list)
    model.eval()
    hits = np.zeros(2, np.int64)
    done = 0
    with progress_bar(progress) as bars, torch.inference_mode():
        task = bars.add_task("dense", total=count, rate="")
        for pixels, label in images:
            image = torch.from_numpy(pixels).to(device).permute(2, 0, 1).float()  # (3, H, W)
            image = (image - mean.view(3, 1, 1)) * input_scale
            scores = dense_scores(model, image, scale_list, stride=stride, flip=flip)
            hits += topk_correct(scores[None].cpu(), torch.tensor([label]))
            done += 1
            bars.advance(task)
    if done == 0:
        raise DatasetError(f"no {split!r} images to evaluate in {origin}")
    return {
        "top1_err": float(1 - hits[0] / done),
        "top5_err": float(1 - hits[1] / done),
        "count": done,
        "skipped": count - done,
        "source": origin,
        "scales": [list(s) if isinstance(s, tuple) else s for s in scale_list],
        "stride": stride,
        "flip": flip,
    }


def _dense_images(
    manifest: dict, shards: str, split: str, source: str, scales: list
) -> tuple[Iterator[tuple[np.ndarray, int]], int, str]:
    """(uint8 (H, W, 3) image, label) pairs at full resolution, their count and origin."""
    needed = max(max(s) if isinstance(s, tuple) else s for s in scales)
    if source == "shards":
        return _shard_images(manifest, shards, split, needed)
    root = manifest.get("source") if source == "raw" else source
    if not root or not os.path.isdir(root):
        raise DatasetError(
            f"--source {source}: the raw dataset {root!r} is not a directory here; pass "
            "--source PATH (the tree `convplat prepare` read) or --source shards"
        )
    return _raw_images(manifest, root, split, needed)


def _raw_images(manifest: dict, root: str, split: str, needed: int):
    """Decode the raw tree's ``split`` images, labelled with the shards' class indices (wnid)."""
    from convplat.pipeline.image import decode_rgb
    from convplat.pipeline.readers import read_dataset

    layout = manifest.get("layout", "auto") if root == manifest.get("source") else "auto"
    listing = read_dataset(root, layout)
    index = {c["wnid"]: int(c["index"]) for c in manifest["classes"]}
    wnids = {c.index: c.wnid for c in listing.classes}
    items = [item for item in listing.items if item.split == split]
    missing = sorted({wnids[i.label] for i in items} - set(index))
    if missing:
        raise DatasetError(
            f"{root} has {split} classes the run was not trained on: {', '.join(missing[:5])}"
        )

    def images():
        for item in items:
            with open(item.path, "rb") as file:
                data = file.read()
            try:
                pixels, _, _ = decode_rgb(data, needed)  # DCT-reduced no lower than needed
            except ImageDecodeError:
                continue  # counted as skipped, as `prepare` rejects such files
            yield pixels, index[wnids[item.label]]

    return images(), len(items), root


def _shard_images(manifest: dict, shards: str, split: str, needed: int):
    """The shards' own images; they must be at least as large as the largest scale."""
    from convplat.pipeline.shardset import split_shards
    from convplat.training.data import eval_loader

    size = int(manifest["size"])
    if size < needed:
        raise ConfigError(
            f"--source shards: the shards hold {size}-pixel images but the largest scale needs "
            f"{needed}; use --source raw or prepare with `convplat prepare --no-crop --size "
            f"{needed}`"
        )
    count = sum(c for _, c in split_shards(manifest, split))
    loader = eval_loader(shards, split, batch_size=1, num_workers=0, crop_size=1, mode="full")

    def images():
        for batch, labels, _ in loader:
            for pixels, label in zip(batch, labels.tolist(), strict=True):
                yield pixels.numpy(), int(label)

    return images(), count, shards
