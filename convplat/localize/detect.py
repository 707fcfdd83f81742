"""OverFeat detection (Sermanet et al. 2014, §5): `convplat detect train` and `detect eval`.

Training is classification done spatially (§5): the frozen conv layers (1-5) run on whole
images at several scales, every output location of the classifier - now with an extra
background class - gets a label from the ground-truth boxes (:func:`window_labels`), and the
loss takes every positive window plus a few negatives mined on the fly per image, random ones
and the most offending ones (§5: "negative training on the fly" instead of bootstrapping
passes). Only the classifier (fc6-fc8) learns; it starts from the classification run's
weights, its output layer widened by one background row.

Inference is dense as for localization (§4): at every scale and location the softmax over
the classes and background; a location whose best object score passes a threshold proposes
its window as a box - or, with a trained localization regressor (``--regressor``), the box the
regressor predicts at that location, as OverFeat does; boxes are greedily merged per class
(scores accumulated) - any number per image, none included. Scored by PASCAL/ILSVRC average
precision at IoU >= 0.5.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from convplat.errors import ConfigError, DatasetError
from convplat.localize.boxes import box_iou, greedy_merge
from convplat.localize.dense import STRIDES, rescale, scaled_size, window_boxes
from convplat.localize.detection_data import (
    eval_samples,
    flip_sample,
    normalise,
    score_maps,
    to_frame,
    train_samples,
    training_windows,
)
from convplat.localize.localize import WEIGHTS, build_regressor, output_dir, regress_pooled
from convplat.localize.regressor import to_image_boxes
from convplat.metrics import average_precision
from convplat.storage import resolve
from convplat.training.checkpoints import (
    CHECKPOINTS,
    FINAL_WEIGHTS,
    LATEST,
    load_run_model,
    load_training_state,
    load_weights,
    read_run_config,
    state_dict_bytes,
    write_json,
    write_jsonl,
)

IOU_THRESHOLD = 0.5  # PASCAL VOC / ILSVRC detection: a hit needs IoU >= 0.5
TRAINABLE = ("classifier", "output")
OPTIMIZERS = ("sgd", "adam")
TASK = "detect"


@dataclass(frozen=True)
class DetectConfig:
    """Settings of `convplat detect train` (recorded in the detection run's config.json).

    ``run`` is the classification run whose conv layers are frozen and whose classifier
    starts the detector; ``scales`` are shorter image sides in pixels; ``batch_size`` is the
    global number of images per step, split over the workers.
    """

    run: str
    data: str = ""  # shards; "" = the classification run's
    out: str = "runs"
    run_name: str = ""
    weights: str = "final"
    scales: tuple[int, ...] = (256, 384)
    stride: str = "coarse"
    trainable: str = "classifier"
    epochs: int = 2
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    positive_iou: float = 0.5
    negative_iou: float = 0.3
    random_negatives: int = 2
    hard_negatives: int = 2
    flip: bool = True
    gpus: int = 0
    workers: int = 1
    cpus_per_worker: int = 0
    seed: int = 0
    keep_checkpoints: int = 1
    max_failures: int = 2
    shuffle_buffer: int = 200
    limit_train_batches: int = 0
    address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        _check(
            bool(self.scales) and min(self.scales) > 0,
            f"--scales: expected sides > 0, got {self.scales}",
        )
        _choice("--stride", self.stride, STRIDES)
        _choice("--trainable", self.trainable, TRAINABLE)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--weights", self.weights, ("final", "best", "latest"))
        _check(self.epochs >= 1, f"--epochs: expected >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"--batch-size: expected >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"--lr: expected > 0, got {self.lr}")
        _check(
            0 <= self.negative_iou <= self.positive_iou <= 1,
            "expected 0 <= --negative-iou <= --positive-iou <= 1, "
            f"got {self.negative_iou} and {self.positive_iou}",
        )
        _check(
            min(self.random_negatives, self.hard_negatives) >= 0,
            "--random-negatives and --hard-negatives: expected >= 0",
        )
        _check(self.gpus >= 0, f"--gpus: expected >= 0, got {self.gpus}")
        _check(self.workers >= 1, f"--workers: expected >= 1, got {self.workers}")
        _check(
            self.batch_size % self.world_size == 0,
            f"--batch-size: expected a multiple of the {self.world_size} workers, "
            f"got {self.batch_size}",
        )
        _check(self.limit_train_batches >= 0, "--limit-train-batches: expected >= 0")

    @property
    def world_size(self) -> int:
        return self.gpus if self.gpus > 0 else self.workers

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.world_size


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{option}: expected one of {', '.join(choices)}, got {value!r}")


# --------------------------------------------------------------------------- the network
def add_background_class(model: nn.Module) -> int:
    """Widen the output layer by one background class; returns its index (the old class count).

    The object rows keep the classification run's weights (a warm start); the background row
    is fresh N(0, 0.01), bias 0 (``reset_classifier``).
    """
    old = model.classifier[-1]
    classes = model.num_classes
    model.reset_classifier(classes + 1)
    new = model.classifier[-1]
    with torch.no_grad():
        new.weight[:classes].copy_(old.weight.view_as(new.weight[:classes]))
        new.bias[:classes].copy_(old.bias)
    return classes


def set_trainable(model: nn.Module, trainable: str) -> list[nn.Parameter]:
    """Freeze everything but the classifier (fc6-fc8) or only its output layer."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    part = model.classifier if trainable == "classifier" else model.classifier[-1]
    for parameter in part.parameters():
        parameter.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


class _Head(nn.Module):
    """The classifier on (L, C, s, s) pooled patches - one window each: what DDP wraps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, patches: Tensor) -> Tensor:
        return self.model.forward_head(patches)  # (L, K)


# --------------------------------------------------------------------------- training
def train_detector(config: DetectConfig) -> str:
    """Train a detector with Ray Train (one TorchTrainer, DDP over the classifier).

    Returns the detection run directory ``<out>/detect-<model>-<stamp>``. Its config.json
    names the model with ``num_classes`` = classes + 1, so ``load_run_model`` rebuilds it.
    """

    from convplat.training.data import read_manifest
    from convplat.training.trainer import run_trainer

    source = read_run_config(config.run)
    if source.get("task") == TASK:
        raise ConfigError(f"{config.run} is already a detection run; pass a classification run")
    data = resolve(config.data or source["data"]).uri
    manifest = read_manifest(data)
    classes = [c["wnid"] for c in manifest["classes"]]
    if len(classes) != source["num_classes"]:
        raise DatasetError(
            f"{data} has {len(classes)} classes but {config.run} was trained on "
            f"{source['num_classes']}; pass the shards it was trained on with --data"
        )
    count = manifest["splits"].get("train", {}).get("count", 0)
    if count < config.batch_size:
        raise DatasetError(
            f"{data}: {count} training images, fewer than one batch of {config.batch_size}; "
            "lower --batch-size"
        )
    name = config.run_name or f"detect-{source['model']}-{datetime.now():%Y%m%d-%H%M%S}"
    run = resolve(
        resolve(config.out).join(name)
        if "://" not in config.out
        else f"{config.out.rstrip('/')}/{name}"
    )
    config = dataclasses.replace(config, run=resolve(config.run).uri, data=data, run_name=name)
    run.fs.create_dir(run.path, recursive=True)
    record = {
        **dataclasses.asdict(config),
        "task": TASK,
        "model": source["model"],
        "num_classes": len(classes) + 1,
        "background": len(classes),
        "classes": classes,
        "input_scale": source.get("input_scale", 1.0),
        "source_run": config.run,
        "data_manifest": {"size": manifest["size"], "source": manifest["source"]},
    }
    write_json(run, "config.json", record)

    run_trainer(
        train_loop_per_worker,
        {"config": dataclasses.asdict(config), "run_dir": run.uri},
        config,
        storage=run.uri,
        what="detection training",
    )
    return run.uri


def _optimizer(params: list[nn.Parameter], config: DetectConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _train_step(
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: list[Tensor],
    samples: list,
    config: DetectConfig,
    background: int,
    generator: torch.Generator,
) -> Tensor:
    """Mine this step's windows, then one optimizer step on them.

    Returns float64 sums: loss x windows, windows, positive windows, right windows, images.
    """
    model.eval()  # mining sees the detector as it is now, without dropout
    patches, targets = training_windows(
        model,
        images,
        samples,
        background=background,
        scales=config.scales,
        stride=config.stride,
        positive_iou=config.positive_iou,
        negative_iou=config.negative_iou,
        random_negatives=config.random_negatives,
        hard_negatives=config.hard_negatives,
        generator=generator,
    )
    model.train()
    targets = targets.to(patches.device)
    logits = head(patches).float()  # (L, C + 1), dropout on; DDP averages the gradients
    loss_sum = F.cross_entropy(logits, targets, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    (loss_sum / max(1, targets.numel())).backward()
    optimizer.step()
    return torch.tensor(
        [
            float(loss_sum),
            targets.numel(),
            int((targets != background).sum()),
            int((logits.argmax(1) == targets).sum()),
            len(samples),
        ],
        dtype=torch.float64,
    )


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: spatial training of the classifier with mined negatives."""
    import ray.train
    import ray.train.torch

    from convplat.training.data import load_stats, read_manifest
    from convplat.training.trainer import (
        append_event,
        report_epoch,
        send_progress,
        step_reporter,
    )

    config = DetectConfig(**loop_config["config"])
    run = resolve(loop_config["run_dir"])
    queue = loop_config["progress"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    torch.manual_seed(config.seed)  # the same fresh background row on every rank
    model, source = load_run_model(config.run, config.weights)
    background = add_background_class(model)
    params = set_trainable(model, config.trainable)
    model.to(device)
    head = ray.train.torch.prepare_model(_Head(model))  # DDP over the trainable layers
    optimizer = _optimizer(params, config)

    history: list[dict] = []
    start_epoch = 1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            meta = load_training_state(directory, model, optimizer)
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        if rank == 0:
            send_progress(queue, "event", f"resumed from checkpoint epoch {meta['epoch']}")
            append_event(run, {"event": "resume", "from_epoch": meta["epoch"], "time": time.time()})
    if rank == 0:
        append_event(
            run,
            {
                "event": "start",
                "epoch": start_epoch,
                "world_size": world,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "time": time.time(),
            },
        )

    manifest = read_manifest(config.data)
    rgb_mean = torch.as_tensor(load_stats(config.data)["rgb_mean"], dtype=torch.float32)
    input_scale = float(source.get("input_scale", 1.0))
    count = manifest["splits"]["train"]["count"]
    steps = max(1, count // config.batch_size)
    if config.limit_train_batches:
        steps = min(steps, config.limit_train_batches)

    for epoch in range(start_epoch, config.epochs + 1):
        torch.manual_seed(config.seed * 100_003 + epoch * 101 + rank)  # dropout
        generator = torch.Generator().manual_seed(config.seed * 7_919 + epoch * 31 + rank)
        flips = np.random.default_rng([config.seed, epoch, rank, 19])
        stream = train_samples(
            config.data,
            manifest,
            seed=config.seed,
            epoch=epoch,
            rank=rank,
            world_size=world,
            shuffle_buffer=config.shuffle_buffer,
        )
        report = step_reporter(queue, epoch, steps) if rank == 0 else None
        # loss x windows, windows, positive windows, right windows, images
        sums = torch.zeros(5, dtype=torch.float64)
        started = time.perf_counter()
        wait = 0.0
        for step in range(steps):
            tick = time.perf_counter()
            samples = list(islice(stream, config.per_worker_batch))
            if config.flip:
                samples = [flip_sample(s) if flips.random() < 0.5 else s for s in samples]
            wait += time.perf_counter() - tick
            images = [normalise(s.image, rgb_mean, input_scale, device) for s in samples]
            step_sums = _train_step(
                model, head, optimizer, images, samples, config, background, generator
            )
            sums += step_sums
            if report is not None:
                report(step, float(step_sums[0] / max(step_sums[1], 1)))
        seconds = time.perf_counter() - started
        if world > 1:
            import torch.distributed as dist

            reduced = sums.to(device)
            dist.all_reduce(reduced)
            sums = reduced.cpu()
        loss_total, windows, positives, right, seen = (float(v) for v in sums)
        if not math.isfinite(loss_total):
            raise FloatingPointError(f"detection loss diverged ({loss_total}); lower --lr")
        metrics = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_total / max(windows, 1),
            "window_acc": right / max(windows, 1),
            "windows": int(windows),
            "positives": int(positives),
            "images": int(seen),
            "images_per_s": seen / max(seconds, 1e-9),
            "seconds": seconds,
            "data_wait": wait / max(seconds, 1e-9),
        }
        history.append(metrics)
        meta = {"epoch": epoch, "history": history, "config": dataclasses.asdict(config)}
        report_epoch(rank, epoch, metrics, meta, model, optimizer, None)
        if rank == 0:
            from convplat.training.plots import curves_png

            write_jsonl(run, "metrics.jsonl", history)
            run.write_bytes("plots/curves.png", curves_png(history, title=config.run_name))
            run.write_bytes(f"{CHECKPOINTS}/{LATEST}", f"epoch-{epoch:03d}\n".encode())
            send_progress(queue, "epoch", metrics)
    if rank == 0:
        run.write_bytes(FINAL_WEIGHTS, state_dict_bytes(model))


# --------------------------------------------------------------------------- inference
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
    record = json.loads(directory.read_bytes("config.json"))
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
        load_weights(regressor, directory.read_bytes(WEIGHTS))
    except (RuntimeError, SafetensorError) as exc:  # wrong shapes (feature size) or a bad file
        reason = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"--regressor {choice}: {WEIGHTS} does not fit its config.json: {reason}"
        ) from None
    return regressor.eval(), f"regressor:{directory.uri}"


def match_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    iou_threshold: float = IOU_THRESHOLD,
) -> Tensor:
    """Which detections of one image are hits (bool (K,), in the given order).

    ILSVRC/PASCAL rule: per class, detections in descending score order each take the
    unmatched ground-truth box of their class with the highest IoU, if that IoU reaches
    ``iou_threshold``; a detection left without one (a duplicate, a wrong place or a wrong
    class) is a false positive.
    """
    hits = torch.zeros(boxes.shape[0], dtype=torch.bool)
    if boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return hits
    iou = box_iou(boxes.reshape(-1, 4), gt_boxes.reshape(-1, 4))  # (K, N)
    iou[labels.reshape(-1, 1) != gt_labels.reshape(1, -1)] = -1.0  # other classes never match
    taken = torch.zeros(gt_boxes.shape[0], dtype=torch.bool)
    for k in scores.argsort(descending=True, stable=True).tolist():
        candidates = iou[k].masked_fill(taken, -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            hits[k] = True
            taken[best] = True
    return hits


class DetectionAP:
    """Per-class average precision over a split, image by image (O §5, PASCAL/ILSVRC AP)."""

    def __init__(self, num_classes: int, iou_threshold: float = IOU_THRESHOLD) -> None:
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.scores: list[list[float]] = [[] for _ in range(num_classes)]
        self.hits: list[list[bool]] = [[] for _ in range(num_classes)]
        self.positives = [0] * num_classes

    def add(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor
    ) -> Tensor:
        """Record one image's detections and ground truth; returns the detections' hits."""
        hits = match_detections(boxes, scores, labels, gt_boxes, gt_labels, self.iou_threshold)
        for label, score, hit in zip(labels.tolist(), scores.tolist(), hits.tolist(), strict=True):
            self.scores[label].append(score)
            self.hits[label].append(hit)
        for label in gt_labels.reshape(-1).tolist():
            self.positives[int(label)] += 1
        return hits

    def result(self, method: str = "area") -> dict:
        """``{"ap": [per class, NaN without ground truth], "map", "positives", "detections"}``;
        mAP averages the classes that have ground-truth boxes (NaN if none has)."""
        ap = [
            average_precision(np.asarray(s), np.asarray(h, bool), p, method)
            for s, h, p in zip(self.scores, self.hits, self.positives, strict=True)
        ]
        defined = [a for a in ap if not math.isnan(a)]
        return {
            "ap": ap,
            "map": float(np.mean(defined)) if defined else float("nan"),
            "positives": list(self.positives),
            "detections": [len(s) for s in self.scores],
            "hits": [int(sum(h)) for h in self.hits],
        }


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
) -> dict:
    """mAP and per-class AP (IoU >= 0.5) of a detection run on ``split`` of its shards.

    ``regressor`` (see :func:`load_detection_regressor`): None proposes each location's
    window, ``"auto"`` or a localization directory the box regressor's boxes instead; the JSON
    records which (``"boxes"``).

    Writes ``RUN/detect-eval-<split>.json`` and ``RUN/plots/detections-<split>.png`` (predicted
    boxes in red, ground truth in green, on the first ``pictures`` images); returns the results.
    """
    from convplat.progress import progress_bar
    from convplat.training.data import load_stats, read_manifest

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
    accumulator = DetectionAP(background)
    shown: list[tuple] = []
    started = time.perf_counter()
    images = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"detect {split}", total=total, rate="")
        for sample in islice(eval_samples(shards, manifest, split), total):
            image = normalise(sample.image, rgb_mean, float(config["input_scale"]), target)
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
            gt_boxes, gt_labels = torch.from_numpy(sample.boxes), torch.from_numpy(sample.labels)
            hits = accumulator.add(boxes, scores, labels, gt_boxes, gt_labels)
            if len(shown) < pictures:
                shown.append((sample, boxes, scores, labels, hits))
            images += 1
            bar.update(
                task, advance=1, rate=f"{images / (time.perf_counter() - started):.1f} img/s"
            )
    if images == 0:
        raise DatasetError(f"{shards} has no {split!r} images")
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
    result["picture"] = location.join(f"plots/detections-{split}.png")
    return result


def detections_png(shown: list[tuple], class_names: list[str]) -> bytes:
    """Predicted (red, with class and score) and true (green) boxes on a few images, as PNG.

    ``shown``: ``(sample, boxes, scores, labels, hits)`` per image, as ``evaluate_detector``
    collects them; dashed red boxes are false positives.
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = max(1, len(shown))
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (sample, boxes, scores, labels, hits) in zip(axes.flat, shown, strict=False):
        ax.imshow(sample.image)
        for x0, y0, x1, y1 in sample.boxes.tolist():
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=2))
        for (x0, y0, x1, y1), score, label, hit in zip(
            boxes.tolist(), scores.tolist(), labels.tolist(), hits.tolist(), strict=True
        ):
            ax.add_patch(
                Rectangle(
                    (x0, y0),
                    x1 - x0,
                    y1 - y0,
                    fill=False,
                    ec="red",
                    lw=1.5,
                    ls="-" if hit else "--",
                )
            )
            ax.text(
                x0,
                y0,
                f"{class_names[label]} {score:.2f}",
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"fc": "red", "alpha": 0.6, "pad": 1, "lw": 0},
            )
        ax.set_title(f"{sample.key}: {len(sample.boxes)} true, {len(boxes)} found", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()
