"""OverFeat localization (O §4, PAPERS §3.5): `convplat localize train RUN` / `eval RUN`.

Training freezes the run's conv layers (the paper's layers 1-5), puts a
:class:`~convplat.localize.regressor.BoxRegressor` on the offset-pooled last-conv maps and
fits it with an L2 loss at several scales under Ray Train (one DDP replica of the regressor per
worker, like `convplat train`). Inference runs classifier and regressor at every location and
scale, keeps the top-k classes per scale, greedily merges their boxes
(:func:`~convplat.localize.boxes.greedy_merge`) and scores ILSVRC localization error.

Everything is written under ``<RUN>/localize/`` (or ``--out``): ``config.json``,
``metrics.jsonl``, ``regressor.safetensors``, ``checkpoints/``, ``eval-<split>.json`` and
``boxes-<split>.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from convplat.errors import ConfigError, ConvplatError
from convplat.localize.boxes import box_iou, greedy_merge
from convplat.localize.dense import (
    PAPER_SCALES,
    STRIDES,
    interleave,
    offset_pool,
    scaled_size,
    window_boxes,
)
from convplat.localize.regressor import HIDDEN, BoxRegressor, to_image_boxes, window_targets
from convplat.storage import resolve
from convplat.training.checkpoints import (
    CHECKPOINTS,
    load_training_state,
    load_weights,
    read_run_config,
    state_dict_bytes,
    write_json,
    write_jsonl,
)

OUT_DIR = "localize"
WEIGHTS = "regressor.safetensors"
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class LocalizeConfig:
    """Settings of `convplat localize train`; crosses into Ray Train as a plain dict.

    The paper gives no optimiser settings for the regressor; Adam 1e-4 learns the demo set
    in a few CPU epochs. ``min_inside`` is the share of a box that must lie in a window for
    that window to train on it (O §4: 50%).
    """

    run: str
    data: str = ""  # "": the run's shards
    out: str = ""  # "": <run>/localize
    weights: str = "final"
    per_class: bool = False  # the paper's PCR; the winning entry used SCR (single-class)
    scales: tuple[int, ...] = PAPER_SCALES
    stride: str = "fine"
    hidden: tuple[int, int] = HIDDEN
    min_inside: float = 0.5
    flip: bool = True
    epochs: int = 3
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    gpus: int = 0
    workers: int = 1
    cpus_per_worker: int = 0
    seed: int = 0
    limit_train_batches: int = 0
    limit_val_batches: int = 0
    keep_checkpoints: int = 2
    max_failures: int = 2
    overwrite: bool = False
    address: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(int(s) for s in self.scales))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        checks = [
            (bool(self.scales), f"--scales: expected at least one scale, got {self.scales}"),
            (min(self.scales, default=1) >= 1, f"--scales: expected > 0, got {self.scales}"),
            (self.stride in STRIDES, f"--stride: expected fine or coarse, got {self.stride!r}"),
            (
                len(self.hidden) == 2 and min(self.hidden) >= 1,
                f"--hidden: expected two widths, got {self.hidden}",
            ),
            (0 < self.min_inside <= 1, f"min_inside: expected 0..1, got {self.min_inside}"),
            (self.epochs >= 1, f"--epochs: expected >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size: expected >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr: expected > 0, got {self.lr}"),
            (
                self.optimizer in OPTIMIZERS,
                f"--optimizer: expected adam or sgd, got {self.optimizer!r}",
            ),
            (self.gpus >= 0 and self.workers >= 1, "--gpus >= 0 and --workers >= 1 expected"),
            (
                self.batch_size % self.world_size == 0,
                f"--batch-size: expected a multiple of the {self.world_size} workers, "
                f"got {self.batch_size}",
            ),
            (
                self.weights in ("final", "best", "latest"),
                f"--weights: expected final, best or latest, got {self.weights!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def world_size(self) -> int:
        return self.gpus if self.gpus > 0 else self.workers

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.world_size


# --- the model pieces ---------------------------------------------------------------------------


def last_conv_channels(model: nn.Module) -> int:
    """Channels of the pooled maps the classifier (and so the regressor) reads."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def freeze(model: nn.Module) -> nn.Module:
    """O §4: "fix the feature extraction layers (1-5)"; the classifier is not trained either."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def build_regressor(model: nn.Module, record: dict) -> BoxRegressor:
    """The regressor a localization ``config.json`` record (or a LocalizeConfig dict) asks for."""
    return BoxRegressor(
        last_conv_channels(model),
        model.feature_size,
        num_classes=model.num_classes,
        per_class=bool(record["per_class"]),
        hidden=tuple(record["hidden"]),
    )


def normalize(images: Tensor, transform, flips: Tensor | None = None) -> Tensor:
    """uint8 frames (B, S, S, 3) -> mean-subtracted, scaled float (B, 3, S, S), as training
    saw them (the per-pixel mean over the whole frame), mirrored where ``flips`` is 1."""
    windows = torch.zeros((images.shape[0], 3), dtype=torch.int64, device=images.device)
    if flips is not None:
        windows[:, 2] = flips
    return transform(images, windows, lighting=False)


def rescale_batch(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, 3, H, W) -> (B, 3, *size), antialiased bilinear like ``dense.rescale``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


@dataclass
class ScaleOutput:
    """Dense outputs of one scale: regressor ``boxes`` (B, 4·boxes, H, W), class ``logits``
    (B, C, H, W) or None, the ``windows`` (H·W, 4) in scaled pixels and the scale ``factor``
    (sx, sy) from the frame to the scaled image."""

    boxes: Tensor
    logits: Tensor | None
    windows: Tensor
    factor: tuple[float, float]


def regress_pooled(regressor: nn.Module, pooled: Tensor) -> Tensor:
    """The regressor at every offset of offset-pooled maps (n*n, B, C, h, w), interleaved
    into one (B, 4·boxes, H, W) map (O §3.3, Fig. 8)."""
    offsets, batch, channels, h, w = pooled.shape
    raw = regressor(pooled.reshape(offsets * batch, channels, h, w))
    return interleave(raw.view(offsets, batch, *raw.shape[1:]))


def run_scale(
    model: nn.Module,
    regressor: nn.Module,
    images: Tensor,
    scale: int,
    stride: str,
    classify: bool = False,
) -> ScaleOutput:
    """Frozen conv layers, offset pooling, then regressor (and classifier) at every offset,
    interleaved into one map per image (O §3.3, Fig. 8)."""
    height, width = images.shape[-2:]
    size = scaled_size(height, width, scale)
    with torch.no_grad():
        unpooled = model.forward_features(rescale_batch(images, size), pool=False)
        pooled = offset_pool(model, unpooled, stride)  # (n*n, B, C, h, w)
    offsets, batch, channels, h, w = pooled.shape
    s = model.feature_size
    if h < s or w < s:
        raise ConfigError(
            f"scale {scale}: a {size[0]}x{size[1]} image gives {h}x{w} pooled maps, smaller "
            f"than the {s}x{s} the {model.input_size}-pixel network needs; use larger --scales"
        )
    boxes = regress_pooled(regressor, pooled)  # (B, 4·boxes, H, W)
    logits = None
    if classify:
        with torch.no_grad():
            out = model.classifier_as_conv()(pooled.reshape(offsets * batch, channels, h, w))
            logits = interleave(out.view(offsets, batch, *out.shape[1:]))  # (B, C, H, W)
    windows = window_boxes(model, boxes.shape[-2], boxes.shape[-1], stride).to(images.device)
    return ScaleOutput(boxes, logits, windows, (size[1] / width, size[0] / height))


def regression_loss(
    model: nn.Module,
    regressor: BoxRegressor,
    images: Tensor,
    labels: Tensor,
    boxes: Sequence[Tensor],
    scales: Sequence[int],
    stride: str = "fine",
    min_inside: float = 0.5,
) -> tuple[Tensor, int]:
    """O §4's L2 loss: squared error of the 4 edges (window-relative), summed over the edges
    and averaged over every training window of every image at every scale.

    Returns the loss and the number of windows it averaged (0: a zero loss that still touches
    every regressor parameter, so DDP's gradient all-reduce sees the same graph on all ranks).
    """
    module = regressor.module if hasattr(regressor, "module") else regressor
    total = images.new_zeros(())
    count = 0
    for scale in scales:
        out = run_scale(model, regressor, images, scale, stride)
        predicted = module.select(out.boxes, labels)  # (B, 4, H, W)
        predicted = predicted.flatten(2).transpose(1, 2)  # (B, L, 4)
        sx, sy = out.factor
        factor = torch.tensor([sx, sy, sx, sy], device=images.device)
        for b, gt in enumerate(boxes):
            targets, mask = window_targets(
                gt.to(images.device) * factor, out.windows, model.input_size, min_inside
            )
            if mask.any():
                total = total + (predicted[b][mask] - targets[mask]).pow(2).sum()
                count += int(mask.sum())
        total = total + 0.0 * predicted.sum()
    return total / max(count, 1), count


# --- training (Ray Train) -----------------------------------------------------------------------


def output_dir(run: str, out: str = "") -> str:
    """Where a run's localization lives: ``out`` or ``<run>/localize``."""
    return resolve(out).uri if out else resolve(run).join(OUT_DIR)


def train_localizer(config: LocalizeConfig) -> str:
    """`convplat localize train`: fit the box regressor with Ray Train; returns the output dir."""

    from convplat.localize.box_data import boxed_count
    from convplat.training.data import read_manifest
    from convplat.training.trainer import run_trainer

    record = read_run_config(config.run)
    data = resolve(config.data or record["data"]).uri
    manifest = read_manifest(data)
    if len(manifest["classes"]) != record["num_classes"]:
        raise ConfigError(
            f"{data} has {len(manifest['classes'])} classes but the run was trained on "
            f"{record['num_classes']}; pass the run's own shards with --data"
        )
    boxed = boxed_count(data, "train")
    if boxed < config.batch_size:
        raise ConfigError(
            f"{data}: {boxed} training samples with boxes, fewer than one batch of "
            f"{config.batch_size}; lower --batch-size or use shards with boxes"
        )
    out = resolve(output_dir(config.run, config.out))
    if out.exists(CHECKPOINTS) or out.exists(WEIGHTS):
        if not config.overwrite:
            raise ConvplatError(
                f"{out.uri} already holds a trained regressor; pass --overwrite to replace "
                "it or --out DIR for another"
            )
        if out.exists(CHECKPOINTS):  # else Ray Train would resume the old run
            out.fs.delete_dir(out.join(CHECKPOINTS))
    out.fs.create_dir(out.path, recursive=True)
    config = dataclasses.replace(config, run=resolve(config.run).uri, data=data, out=out.uri)
    write_json(
        out,
        "config.json",
        {
            **dataclasses.asdict(config),
            "model": record["model"],
            "num_classes": record["num_classes"],
            "classes": record.get("classes", []),
            "input_scale": record.get("input_scale", 1.0),
        },
    )

    run_trainer(
        localize_loop_per_worker,
        {"config": dataclasses.asdict(config)},
        config,
        storage=out.uri,
        what="localization training",
    )
    return out.uri


def _epoch_line(m: dict) -> str:
    val = "" if m.get("val_loss") is None else f" val_l2 {m['val_loss']:.4f}"
    return (
        f"epoch {m['epoch']}: train_l2 {m['train_loss']:.4f}{val} "
        f"{m['images_per_s']:.1f} images/s, {m['seconds']:.0f} s"
    )


def localize_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: frozen classifier run + one DDP replica of the box regressor."""
    import ray.train
    import ray.train.torch

    from convplat.localize.box_data import eval_box_batches, train_box_batches
    from convplat.training.augment import BatchTransform
    from convplat.training.checkpoints import load_run_model
    from convplat.training.data import load_stats, read_manifest
    from convplat.training.trainer import (
        build_optimizer,
        report_epoch,
        send_progress,
        step_reporter,
    )

    config = LocalizeConfig(**loop_config["config"])
    queue = loop_config["progress"]
    out = resolve(config.out)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    distributed = world > 1

    model, record = load_run_model(config.run, config.weights)
    model = freeze(model).to(device)
    torch.manual_seed(config.seed)  # identical init on every rank (DDP also broadcasts)
    regressor = build_regressor(model, dataclasses.asdict(config))
    net = ray.train.torch.prepare_model(regressor)  # to device, DDP when world > 1
    optimizer = build_optimizer(regressor.parameters(), config)
    transform = BatchTransform.from_stats(
        load_stats(config.data), lighting_std=0.0, input_scale=record.get("input_scale", 1.0)
    ).to(device)
    has_val = "val" in read_manifest(config.data)["splits"]

    history: list[dict] = []
    start = 1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            meta = load_training_state(directory, regressor, optimizer)
        start, history = meta["epoch"] + 1, meta["history"]
        if rank == 0:
            send_progress(queue, "event", f"resumed from checkpoint epoch {meta['epoch']}")

    for epoch in range(start, config.epochs + 1):
        generator = torch.Generator().manual_seed(config.seed * 7_919 + epoch * 31 + rank)
        batches, total = train_box_batches(
            config.data,
            batch_size=config.per_worker_batch,
            epoch=epoch,
            rank=rank,
            world_size=world,
            seed=config.seed,
        )
        if config.limit_train_batches:
            total = min(total, config.limit_train_batches)
        report = step_reporter(queue, epoch, total) if rank == 0 else None
        net.train()
        loss_sum, windows, images_seen = 0.0, 0, 0
        started = time.perf_counter()
        for step, batch in zip(range(total), batches, strict=False):
            flips = (
                torch.randint(0, 2, (len(batch.labels),), generator=generator)
                if config.flip
                else torch.zeros(len(batch.labels), dtype=torch.int64)
            )
            images = normalize(batch.images.to(device), transform, flips.to(device))
            boxes = [
                mirror(b, images.shape[-1]) if f else b
                for b, f in zip(batch.boxes, flips.tolist(), strict=True)
            ]
            loss, count = regression_loss(
                model,
                net,
                images,
                batch.labels.to(device),
                boxes,
                config.scales,
                config.stride,
                config.min_inside,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss) * count
            windows += count
            images_seen += len(batch.labels)
            if report is not None:
                report(step, float(loss))
        seconds = time.perf_counter() - started
        sums = torch.tensor([loss_sum, windows, images_seen], dtype=torch.float64, device=device)
        if distributed:
            dist.all_reduce(sums)
        val = validation_loss(
            model,
            net,
            eval_box_batches(
                config.data,
                "val",
                batch_size=config.per_worker_batch,
                rank=rank,
                world_size=world,
                limit=config.limit_val_batches * config.per_worker_batch,
            )
            if has_val
            else [],
            transform,
            config,
            device,
            distributed,
        )
        metrics = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(sums[0] / max(float(sums[1]), 1.0)),
            "train_windows": int(sums[1]),
            "val_loss": val,
            "images_per_s": float(sums[2]) / max(seconds, 1e-9),
            "seconds": seconds,
        }
        history.append(metrics)
        meta = {"epoch": epoch, "history": history, "config": dataclasses.asdict(config)}
        report_epoch(rank, epoch, metrics, meta, regressor, optimizer, None)
        if rank == 0:
            write_jsonl(out, "metrics.jsonl", history)
            out.write_bytes(f"{CHECKPOINTS}/latest", f"epoch-{epoch:03d}\n".encode())
            send_progress(queue, "event", _epoch_line(metrics))
    if rank == 0:
        out.write_bytes(WEIGHTS, state_dict_bytes(regressor))


def mirror(boxes: Tensor, width: int) -> Tensor:
    """Boxes of a left-right mirrored image of ``width`` pixels."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def validation_loss(
    model, regressor, batches, transform, config, device, distributed
) -> float | None:
    """Mean L2 loss over the validation windows (every rank's share, summed); None when no
    validation window has a box."""
    module = regressor.module if hasattr(regressor, "module") else regressor
    module.eval()
    loss_sum, windows = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            images = normalize(batch.images.to(device), transform)
            loss, count = regression_loss(
                model,
                module,
                images,
                batch.labels.to(device),
                batch.boxes,
                config.scales,
                config.stride,
                config.min_inside,
            )
            loss_sum += float(loss) * count
            windows += count
    sums = torch.tensor([loss_sum, windows], dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(sums)
    return float(sums[0] / sums[1]) if float(sums[1]) > 0 else None


# --- inference and ILSVRC localization error ----------------------------------------------------


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
) -> dict:
    """`convplat localize eval`: ILSVRC top-1/top-5 localization error of a trained regressor.

    Writes ``eval-<split>.json`` and ``boxes-<split>.png`` (predicted vs true boxes on the
    first ``samples`` images) into the localization directory and returns the metrics.
    """
    from convplat.localize.box_data import eval_box_batches
    from convplat.localize.plots import boxes_png
    from convplat.progress import progress_bar
    from convplat.training.augment import BatchTransform
    from convplat.training.checkpoints import load_run_model
    from convplat.training.data import load_stats, read_manifest

    if top_k < 1:
        raise ConfigError(f"--top-k: expected >= 1, got {top_k}")
    if threshold < 0:
        raise ConfigError(f"--threshold: expected >= 0, got {threshold}")
    location = resolve(output_dir(run, out))
    if not location.exists(WEIGHTS) or not location.exists("config.json"):
        raise ConvplatError(
            f"no trained regressor in {location.uri}: run `convplat localize train {run}` first"
        )
    record = json.loads(location.read_bytes("config.json"))
    scales = tuple(scales or record["scales"])
    stride = stride or record["stride"]
    if stride not in STRIDES:
        raise ConfigError(f"--stride: expected fine or coarse, got {stride!r}")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, run_config = load_run_model(run, record["weights"])
    model = freeze(model).to(target)
    regressor = build_regressor(model, record)
    load_weights(regressor, location.read_bytes(WEIGHTS))
    regressor = regressor.to(target).eval()
    shards = data or record["data"]
    transform = BatchTransform.from_stats(
        load_stats(shards), lighting_std=0.0, input_scale=run_config.get("input_scale", 1.0)
    ).to(target)
    names = [c.get("name") or c["wnid"] for c in read_manifest(shards)["classes"]]

    count = top1 = top5 = cls1 = cls5 = 0
    rows: list[dict] = []
    pictures: list[tuple] = []
    started = time.perf_counter()
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("localize", total=None, rate="")
        for batch in eval_box_batches(shards, split, batch_size=batch_size, limit=limit):
            images = normalize(batch.images.to(target), transform)
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
                rows.append(
                    {
                        "key": batch.keys[i],
                        "label": label,
                        "truth": truth.tolist(),
                        "guesses": [dataclasses.asdict(a) for a in answers],
                        "merged": int(merged[0].shape[0]),
                        "candidates": int(boxes.shape[0]),
                    }
                )
                if len(pictures) < samples:
                    pictures.append((batch.images[i].numpy(), label, truth, answers))
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
    write_json(location, f"eval-{split}.json", {**result, "images": rows})
    location.write_bytes(f"boxes-{split}.png", boxes_png(pictures, names))
    result["png"] = location.join(f"boxes-{split}.png")
    return result
