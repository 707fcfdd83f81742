"""`convplat localize eval`: OverFeat localization inference (O §4 steps a-d) and the ILSVRC
localization error: classifier and regressor at every location and scale, the top-k classes
per scale, greedily merged boxes, and top-1/top-5 error at IoU >= 0.5.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from convplat.config.validate import parse_json_object, pick_device
from convplat.errors import ConfigError, ConvplatError
from convplat.localize.boxes import box_iou, greedy_merge
from convplat.localize.localize import WEIGHTS, output_dir
from convplat.localize.multiscale import (
    build_regressor,
    check_scales,
    frames_to_inputs,
    freeze_all,
    run_scale,
)
from convplat.localize.regressor import BoxRegressor, to_image_boxes
from convplat.storage import resolve
from convplat.training.checkpoints import load_weights, write_json
from convplat.training.dense import STRIDES


@dataclass
class Guess:
    """One (class, box) answer: ILSVRC lets an image have up to five."""

    label: int
    box: list[float]
    score: float


def image_candidates(
    model: nn.Module,
    regressor: BoxRegressor,
    images: Tensor,
    scales: Sequence[int],
    stride: str,
    top_k: int,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """O §4 steps (a)-(c) for a batch: per image the union over scales of the boxes of the
    top-k classes of each scale, in frame pixels, with each window's class probability.

    Returns per image ``(boxes (N, 4), scores (N,), labels (N,))``.
    """
    batch, _, height, width = images.shape
    per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(batch)]
    limit = torch.tensor([width, height, width, height], dtype=torch.float32)
    for scale in scales:
        with torch.no_grad():
            out = run_scale(model, regressor, images, scale, stride, classify=True)
        probs = out.logits.float().softmax(dim=1).flatten(2).cpu()  # (B, C, L)
        k = min(top_k, probs.shape[1])
        classes = probs.amax(dim=2).topk(k, dim=1).indices  # (B, k): (a) C_s
        raw = out.boxes.float().cpu()
        sx, sy = out.factor
        unscale = torch.tensor([sx, sy, sx, sy])
        windows = out.windows.cpu()
        for b in range(batch):
            for label in classes[b].tolist():
                relative = regressor.select(raw[b : b + 1], torch.tensor([label]))[0]
                relative = relative.flatten(1).T  # (L, 4)
                boxes = to_image_boxes(relative, windows, model.input_size) / unscale
                boxes = boxes.clamp_min(0).minimum(limit)  # (b) B_s, in frame pixels
                per_image[b].append(
                    (boxes, probs[b, label], torch.full((len(boxes),), label, dtype=torch.int64))
                )
    return [tuple(torch.cat([part[i] for part in parts]) for i in range(3)) for parts in per_image]


def guesses(boxes: Tensor, scores: Tensor, labels: Tensor, count: int = 5) -> list[Guess]:
    """The final answers from merged boxes: each class's best box, classes ranked by it."""
    answers: list[Guess] = []
    seen: set[int] = set()
    for i in scores.argsort(descending=True, stable=True).tolist():
        label = int(labels[i])
        if label in seen:
            continue
        seen.add(label)
        answers.append(Guess(label, [round(float(v), 2) for v in boxes[i]], float(scores[i])))
        if len(answers) == count:
            break
    return answers


def localization_correct(answer: Guess, label: int, truth: Tensor, iou: float = 0.5) -> bool:
    """ILSVRC: the right class and IoU >= 0.5 with some ground-truth box of it."""
    if answer.label != label or truth.numel() == 0:
        return False
    overlap = box_iou(torch.tensor([answer.box]), truth.reshape(-1, 4).float())
    return bool((overlap >= iou).any())


def evaluate_localizer(
    run: str,
    *,
    out: str = "",
    data: str = "",
    split: str = "val",
    scales: Sequence[int] | None = None,
    stride: str | None = None,
    top_k: int = 5,
    threshold: float = 0.5,
    batch_size: int = 16,
    limit: int = 0,
    samples: int = 8,
    device: str | None = None,
    progress: bool = True,
    loader_workers: int = -1,
) -> dict:
    """`convplat localize eval`: ILSVRC top-1/top-5 localization error of a trained regressor.

    Writes ``eval-<split>.json`` (images in split order) and ``boxes-<split>.png`` (predicted
    vs true boxes on the split's first ``samples`` images) into the localization directory
    and returns the metrics. ``limit``: only the split's first ``limit`` images;
    ``loader_workers``: decoding processes (-1: one fewer than the CPUs, at most 8).
    """
    from convplat.localize.box_data import eval_box_loader
    from convplat.localize.plots import boxes_png
    from convplat.pipeline.shardset import load_stats, read_manifest
    from convplat.progress import progress_bar
    from convplat.training.augment import BatchTransform
    from convplat.training.checkpoints import load_run_model
    from convplat.training.data import default_num_workers

    if top_k < 1:
        raise ConfigError(f"--top-k: expected >= 1, got {top_k}")
    if not 0 <= threshold < math.inf:  # nan: no box would ever merge
        raise ConfigError(f"--threshold: expected a finite value >= 0, got {threshold}")
    if samples < 0:
        raise ConfigError(f"--samples: expected >= 0, got {samples}")
    if loader_workers < -1:
        raise ConfigError(f"--loader-workers: expected >= -1, got {loader_workers}")
    if limit < 0:
        raise ConfigError(f"--limit: expected >= 0, got {limit}")
    location = resolve(output_dir(run, out))
    if not location.exists(WEIGHTS) or not location.exists("config.json"):
        raise ConvplatError(
            f"no trained regressor in {location.uri}: run `convplat localize train {run}` first"
        )
    record = parse_json_object(
        location.read_bytes("config.json"), location.child("config.json").uri
    )
    scales = tuple(scales or record["scales"])
    stride = stride or record["stride"]
    if stride not in STRIDES:
        raise ConfigError(f"--stride: expected fine or coarse, got {stride!r}")
    if min(scales) < 1:
        raise ConfigError(f"--scales: expected sides > 0, got {scales}")
    target = pick_device(device)
    model, run_config = load_run_model(run, record["weights"])
    check_scales(run_config["model"], run_config["num_classes"], scales, stride)
    model = freeze_all(model).to(target)
    regressor = build_regressor(model, record)
    load_weights(regressor, location.read_bytes(WEIGHTS), location.child(WEIGHTS).uri)
    regressor = regressor.to(target).eval()
    shards = data or record["data"]
    transform = BatchTransform.from_stats(
        load_stats(shards), lighting_std=0.0, input_scale=run_config.get("input_scale", 1.0)
    ).to(target)
    names = [c.get("name") or c["wnid"] for c in read_manifest(shards)["classes"]]

    count = top1 = top5 = cls1 = cls5 = 0
    rows: list[tuple[int, dict]] = []
    pictures: list[tuple[int, tuple]] = []
    started = time.perf_counter()
    workers = default_num_workers() if loader_workers < 0 else loader_workers
    batches = eval_box_loader(
        shards, split, batch_size=batch_size, num_workers=workers, limit=limit
    )
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("localize", total=None, rate="")
        for batch in batches:
            images = frames_to_inputs(batch.images.to(target), transform)
            candidates = image_candidates(model, regressor, images, scales, stride, top_k)
            for i, (boxes, scores, labels) in enumerate(candidates):
                merged = greedy_merge(boxes, scores, labels, threshold)  # (d) + final scores
                answers = guesses(*merged)
                label, truth = int(batch.labels[i]), batch.boxes[i]
                hits = [localization_correct(a, label, truth) for a in answers]
                count += 1
                top1 += bool(hits[:1] and hits[0])
                top5 += any(hits)
                cls1 += bool(answers and answers[0].label == label)
                cls5 += any(a.label == label for a in answers)
                index = batch.indices[i]  # loader workers interleave; put back in split order
                row = {
                    "key": batch.keys[i],
                    "label": label,
                    "truth": truth.tolist(),
                    "guesses": [dataclasses.asdict(a) for a in answers],
                    "merged": int(merged[0].shape[0]),
                    "candidates": int(boxes.shape[0]),
                }
                rows.append((index, row))
                if index < samples:  # the split's first images, whatever slot read them
                    pictures.append((index, (batch.images[i].numpy(), label, truth, answers)))
            bar.update(task, completed=count, rate="")
    if count == 0:
        raise ConvplatError(f"{shards}: the {split!r} split has no samples")
    result = {
        "run": run,
        "split": split,
        "data": shards,
        "scales": list(scales),
        "stride": stride,
        "top_k": top_k,
        "threshold": threshold,
        "per_class": bool(record["per_class"]),
        "count": count,
        "top1_loc_err": 1 - top1 / count,
        "top5_loc_err": 1 - top5 / count,
        "top1_cls_err": 1 - cls1 / count,
        "top5_cls_err": 1 - cls5 / count,
        "seconds": time.perf_counter() - started,
    }
    images = [row for _, row in sorted(rows, key=lambda r: r[0])]
    write_json(location, f"eval-{split}.json", {**result, "images": images})
    drawn = [picture for _, picture in sorted(pictures, key=lambda p: p[0])]
    location.write_bytes(f"boxes-{split}.png", boxes_png(drawn, names))
    result["png"] = location.child(f"boxes-{split}.png").uri
    return result
