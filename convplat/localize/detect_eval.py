"""`convplat detect eval`: OverFeat detection inference (O §5) and its average precision.

Inference is dense as for localization (§4): at every scale and location the softmax over
the classes and background; a location whose best object score passes a threshold proposes
its window as a box - or, with a trained localization regressor (``--regressor``), the box the
regressor predicts at that location, as OverFeat does; boxes are greedily merged per class
(scores accumulated) - any number per image, none included. Scored by PASCAL/ILSVRC average
precision at IoU >= 0.5 (:class:`convplat.metrics.DetectionAP`).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch
from torch import Tensor, nn

from convplat.config.validate import parse_json_object
from convplat.errors import ConfigError, ConvplatError, DatasetError
from convplat.localize.boxes import greedy_merge
from convplat.localize.detect import TASK
from convplat.localize.detection_data import (
    eval_detection_loader,
    score_maps,
    to_frame,
    whole_image_input,
)
from convplat.localize.localize import WEIGHTS, output_dir
from convplat.localize.multiscale import (
    build_regressor,
    check_scales,
    regress_pooled,
    too_small_scales,
)
from convplat.localize.plots import detections_png
from convplat.localize.regressor import to_image_boxes
from convplat.metrics import IOU_THRESHOLD, DetectionAP
from convplat.storage import resolve
from convplat.training.checkpoints import load_run_model, load_weights, read_run_config, write_json
from convplat.training.dense import STRIDES, rescale, scaled_size, window_boxes


def regressed_boxes(
    model: nn.Module,
    regressor: nn.Module,
    pooled: Tensor,
    factor: tuple[float, float],
    stride: str,
    labels: Tensor,
    shape: tuple[int, int],
) -> Tensor:
    """Each location's regressor box (L, 4) in the unscaled image's pixels, for its class.

    ``pooled`` are the offset-pooled maps ``score_maps`` returned with the class map, so the
    conv layers run once per scale and location (Y, X) of both maps is the same window;
    ``shape`` is the class map's (h', w'), checked so a misaligned regressor map fails loudly;
    ``factor`` is (fy, fx) from the image to the scaled image. ``labels`` (L,) picks each
    location's 4 outputs of a per-class regressor (ignored by a single-class one).
    """
    boxes = regress_pooled(regressor, pooled)
    if tuple(boxes.shape[-2:]) != tuple(shape):
        raise RuntimeError(
            f"regressor map {tuple(boxes.shape[-2:])} does not line up with the class "
            f"map {tuple(shape)}"
        )
    windows = window_boxes(model, shape[0], shape[1], stride).to(boxes.device)
    per_location = boxes[0].flatten(1).T[..., None, None]  # (L, 4·boxes, 1, 1)
    relative = regressor.select(per_location, labels)[..., 0, 0].float()  # (L, 4)
    pixels = to_image_boxes(relative, windows, model.input_size)
    return to_frame(pixels.cpu(), factor)


@torch.no_grad()
def detect_image(
    model: nn.Module,
    image: Tensor,
    *,
    background: int,
    scales: tuple[int, ...],
    stride: str = "coarse",
    score_threshold: float = 0.5,
    merge_threshold: float = 0.6,
    max_windows: int = 500,
    regressor: nn.Module | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Detections in one normalised (3, H, W) image: ``(boxes (K, 4), scores (K,), labels (K,))``.

    At every scale and location: softmax over classes and background; a location whose best
    object probability reaches ``score_threshold`` proposes a box with that class and
    probability - its window, or with ``regressor`` (a localization ``BoxRegressor`` on the
    same frozen conv layers) the box it predicts there for that class (O §5: "as for
    localization") - mapped back to the image's pixels and clipped; at most ``max_windows``
    of the best proposals are greedily merged per class (O §4; merged scores are summed).
    K may be 0.
    """
    height, width = image.shape[-2:]
    boxes, scores, labels = [], [], []
    for scale in scales:
        size = scaled_size(height, width, scale)
        maps = score_maps(model, rescale(image, size).unsqueeze(0), stride)
        if maps is None:
            continue
        logits = maps[1][0].float()  # (K, h', w')
        probs = logits.softmax(dim=0)[:background].flatten(1)  # (C, h'w')
        best, label = probs.max(dim=0)
        keep = best >= score_threshold
        if regressor is None:
            proposed = window_boxes(model, logits.shape[-2], logits.shape[-1], stride)
            proposed = to_frame(proposed, (size[0] / height, size[1] / width))
        else:
            shape = (logits.shape[-2], logits.shape[-1])
            factor = (size[0] / height, size[1] / width)
            proposed = regressed_boxes(model, regressor, maps[0], factor, stride, label, shape)
        proposed = proposed.to(image.device)
        boxes.append(proposed[keep])
        scores.append(best[keep])
        labels.append(label[keep])
    if not boxes:
        raise ConfigError(
            f"no scale in {scales} holds a {model.input_size}x{model.input_size} window of a "
            f"{height}x{width} image; use larger --scales"
        )
    boxes_t, scores_t, labels_t = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    top = scores_t.argsort(descending=True, stable=True)[:max_windows]
    boxes_t, scores_t, labels_t = boxes_t[top], scores_t[top], labels_t[top]
    boxes_t[:, 0::2] = boxes_t[:, 0::2].clamp(0, width)
    boxes_t[:, 1::2] = boxes_t[:, 1::2].clamp(0, height)
    return greedy_merge(boxes_t.cpu(), scores_t.cpu(), labels_t.cpu(), merge_threshold)


def load_detection_regressor(config: dict, choice: str | None) -> tuple[nn.Module | None, str]:
    """The localization regressor ``detect eval --regressor`` asks for, and its label.

    ``choice``: None (windows), ``"auto"`` (``<source run>/localize`` when it holds trained
    weights, else windows) or a localization output directory. Its boxes only mean something
    on the conv features it was trained on, so it must come from the detector's own source
    run and weights, with the same model and classes. Returns ``(regressor or None, "windows"
    | "regressor:<dir>")``; the regressor is on the CPU, in eval mode.
    """
    from convplat.training.models import create_model

    if choice is None:
        return None, "windows"
    directory = resolve(output_dir(config["run"], "" if choice == "auto" else choice))
    trained = directory.exists(WEIGHTS) and directory.exists("config.json")
    if choice == "auto" and not trained:
        return None, "windows"
    if not trained:
        raise ConfigError(
            f"--regressor {choice}: no trained regressor ({WEIGHTS} and config.json) in "
            f"{directory.uri}; train one with `convplat localize train {config['run']}`"
        )
    record = parse_json_object(
        directory.read_bytes("config.json"), directory.child("config.json").uri
    )
    source = (resolve(config["run"]).uri, config.get("weights", "final"))
    trained_run = resolve(record["run"]).uri if record.get("run") else "?"
    trained_on = (trained_run, record.get("weights", "final"))
    if trained_on != source:
        raise ConfigError(
            f"--regressor {choice}: trained on the features of {trained_on[0]} "
            f"({trained_on[1]} weights), but this detector's conv layers are {source[0]}'s "
            f"({source[1]}); use that run's regressor"
        )
    if record.get("model") != config["model"] or record.get("num_classes") != config["background"]:
        raise ConfigError(
            f"--regressor {choice}: a {record.get('model')} regressor for "
            f"{record.get('num_classes')} classes does not fit this {config['model']} detector "
            f"of {config['background']} classes"
        )
    # Built as the localizer built it: on the classification model (C classes, not C + 1).
    regressor = build_regressor(
        create_model(record["model"], num_classes=record["num_classes"]), record
    )
    try:
        load_weights(regressor, directory.read_bytes(WEIGHTS), directory.child(WEIGHTS).uri)
    except ConvplatError as exc:  # wrong shapes (feature size) or a bad file
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"--regressor {choice}: {WEIGHTS} does not fit its config.json: {reason}"
        ) from None
    return regressor.eval(), f"regressor:{directory.uri}"


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def evaluate_detector(
    run: str,
    *,
    data: str | None = None,
    split: str = "val",
    scales: tuple[int, ...] | None = None,
    stride: str | None = None,
    score_threshold: float = 0.5,
    merge_threshold: float = 0.6,
    weights: str = "final",
    limit: int = 0,
    pictures: int = 6,
    device: str | None = None,
    progress: bool = True,
    regressor: str | None = None,
    loader_workers: int = -1,
) -> dict:
    """mAP and per-class AP (IoU >= 0.5) of a detection run on ``split`` of its shards.

    ``regressor`` (see :func:`load_detection_regressor`): None proposes each location's
    window, ``"auto"`` or a localization directory the box regressor's boxes instead; the JSON
    records which (``"boxes"``).

    Writes ``RUN/detect-eval-<split>.json`` and ``RUN/plots/detections-<split>.png`` (predicted
    boxes in red, ground truth in green, on the split's first ``pictures`` images); returns the
    results. ``limit``: only the split's first ``limit`` images; ``loader_workers``: decoding
    processes (-1: one fewer than the CPUs, at most 8). Images are scored in split order
    whatever the loader processes, so the results do not depend on their number.
    """
    from convplat.pipeline.shardset import load_stats, read_manifest
    from convplat.progress import progress_bar
    from convplat.training.data import default_num_workers

    config = read_run_config(run)
    if config.get("task") != TASK:
        raise ConfigError(
            f"{run} is not a detection run (no task=detect in config.json); make one with "
            "`convplat detect train RUN`"
        )
    if not 0 <= score_threshold <= 1:
        raise ConfigError(f"--score-threshold: expected 0..1, got {score_threshold}")
    scales = tuple(int(s) for s in (scales or config["scales"]))
    stride = stride or config["stride"]
    if stride not in STRIDES:
        raise ConfigError(f"--stride: expected one of {', '.join(STRIDES)}, got {stride!r}")
    if not scales or min(scales) <= 0:
        raise ConfigError(f"--scales: expected sides > 0, got {scales}")
    # A scale too small for one window is skipped (detect_image); one too small for the conv
    # layers would fail inside torch, so drop them all here, and refuse when none is left.
    small = too_small_scales(config["model"], config["num_classes"], scales, stride)
    if len(small) == len(scales):
        check_scales(config["model"], config["num_classes"], scales, stride)
    scales = tuple(s for s in scales if s not in small)
    if not 0 <= merge_threshold < math.inf:  # nan: no box would ever merge
        raise ConfigError(f"--merge-threshold: expected a finite value >= 0, got {merge_threshold}")
    if pictures < 0:
        raise ConfigError(f"--pictures: expected >= 0, got {pictures}")
    if loader_workers < -1:
        raise ConfigError(f"--loader-workers: expected >= -1, got {loader_workers}")
    if limit < 0:
        raise ConfigError(f"--limit: expected >= 0, got {limit}")
    box_regressor, boxes_used = load_detection_regressor(config, regressor)
    model, _ = load_run_model(run, weights)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target)
    if box_regressor is not None:
        box_regressor.to(target)
    shards = data or config["data"]
    manifest = read_manifest(shards)
    background = int(config["background"])
    rgb_mean = torch.as_tensor(load_stats(shards)["rgb_mean"], dtype=torch.float32)
    total = int(manifest["splits"].get(split, {}).get("count", 0))
    total = min(total, limit) if limit else total
    workers = default_num_workers() if loader_workers < 0 else loader_workers
    batches = eval_detection_loader(shards, split, batch_size=1, num_workers=workers, limit=limit)
    found: list[tuple] = []  # per image, in the order the loader workers deliver them
    started = time.perf_counter()
    images = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"detect {split}", total=total, rate="")
        for (sample,) in batches:
            image = whole_image_input(sample.image, rgb_mean, float(config["input_scale"]), target)
            boxes, scores, labels = detect_image(
                model,
                image,
                background=background,
                scales=scales,
                stride=stride,
                score_threshold=score_threshold,
                merge_threshold=merge_threshold,
                regressor=box_regressor,
            )
            # Only the split's first `pictures` images keep their pixels (for the PNG).
            kept = sample if sample.index < pictures else replace(sample, image=None)
            found.append((sample.index, kept, boxes, scores, labels))
            images += 1
            bar.update(
                task, advance=1, rate=f"{images / (time.perf_counter() - started):.1f} img/s"
            )
    if images == 0:
        raise DatasetError(f"{shards} has no {split!r} images")
    accumulator = DetectionAP(background)  # fed in split order: AP ties break alike every time
    shown: list[tuple] = []
    for index, sample, boxes, scores, labels in sorted(found, key=lambda f: f[0]):
        gt_boxes, gt_labels = torch.from_numpy(sample.boxes), torch.from_numpy(sample.labels)
        hits = accumulator.add(boxes, scores, labels, gt_boxes, gt_labels)
        if index < pictures:
            shown.append((sample, boxes, scores, labels, hits))
    summary = accumulator.result()
    names = {c["index"]: c for c in manifest["classes"]}
    result = {
        "run": run,
        "split": split,
        "data": shards,
        "weights": weights,
        "images": images,
        "scales": list(scales),
        "stride": stride,
        "boxes": boxes_used,
        "score_threshold": score_threshold,
        "merge_threshold": merge_threshold,
        "iou_threshold": IOU_THRESHOLD,
        "map": _finite(summary["map"]),
        "per_class": [
            {
                "index": c,
                "wnid": names.get(c, {}).get("wnid", str(c)),
                "name": names.get(c, {}).get("name", ""),
                "ap": _finite(summary["ap"][c]),
                "positives": summary["positives"][c],
                "detections": summary["detections"][c],
                "hits": summary["hits"][c],
            }
            for c in range(background)
        ],
        "seconds": round(time.perf_counter() - started, 2),
    }
    location = resolve(run)
    write_json(location, f"detect-eval-{split}.json", result)
    class_names = [names.get(c, {}).get("wnid", str(c)) for c in range(background)]
    location.write_bytes(f"plots/detections-{split}.png", detections_png(shown, class_names))
    result["picture"] = location.child(f"plots/detections-{split}.png").uri
    return result
