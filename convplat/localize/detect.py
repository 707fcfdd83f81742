"""OverFeat detection training (Sermanet et al. 2014, §5): `convplat detect train`.

Training is classification done spatially (§5): the frozen conv layers (1-5) run on whole
images at several scales, every output location of the classifier - now with an extra
background class - gets a label from the ground-truth boxes (:func:`window_labels`), and the
loss takes every positive window plus a few negatives mined on the fly per image, random ones
and the most offending ones (§5: "negative training on the fly" instead of bootstrapping
passes). Only the classifier (fc6-fc8) learns; it starts from the classification run's
weights, its output layer widened by one background row (:mod:`convplat.localize.detect_model`).
Inference and AP: :mod:`convplat.localize.detect_eval`.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convplat.config.localize import DetectConfig
from convplat.errors import ConfigError, DatasetError
from convplat.localize.detect_model import DetectorHead, add_background_class, set_trainable
from convplat.localize.detection_data import (
    flip_sample,
    train_detection_loader,
    training_windows,
    whole_image_input,
)
from convplat.localize.multiscale import check_scales
from convplat.storage import resolve
from convplat.training.checkpoints import (
    FINAL_WEIGHTS,
    load_run_model,
    read_run_config,
    write_json,
    write_jsonl,
)
from convplat.training.raytrain import (
    Worker,
    build_optimizer,
    check_finite,
    check_scaling,
    new_run_dir,
    run_name,
    run_trainer,
)

TASK = "detect"


def train_detector(config: DetectConfig) -> str:
    """Train a detector with Ray Train (one TorchTrainer, DDP over the classifier).

    Returns the detection run directory ``<out>/detect-<model>-<stamp>`` (made exclusively:
    an existing ``run_name`` is refused; nothing is written before the shards and the
    cluster's resources are checked). Its config.json names the model with ``num_classes`` =
    classes + 1, so ``load_run_model`` rebuilds it.
    """
    from convplat.pipeline.shardset import read_manifest

    source = read_run_config(config.run)
    if source.get("task") == TASK:
        raise ConfigError(f"{config.run} is already a detection run; pass a classification run")
    check_scales(source["model"], source["num_classes"], config.scales, config.stride)
    # Damaged or missing weights: one line now, not a failure in every Ray worker later.
    load_run_model(config.run, config.weights)
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
    scaling = check_scaling(config)
    name = config.run_name or f"detect-{source['model']}-{datetime.now():%Y%m%d-%H%M%S}"
    run = new_run_dir(
        config.out, name, given=bool(config.run_name), hint="choose another --run-name"
    )
    config = dataclasses.replace(
        config, run=resolve(config.run).uri, data=data, run_name=run_name(run)
    )
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
        {"config": dataclasses.asdict(config)},
        config,
        storage=run.uri,
        what="detection training",
        scaling=scaling,
    )
    return run.uri


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
    import ray.train.torch

    from convplat.pipeline.shardset import load_stats
    from convplat.training.plots import curves_png
    from convplat.training.trainer import resolve_loader_workers

    config = DetectConfig(**loop_config["config"])
    worker = Worker.from_context(loop_config, config.seed)

    torch.manual_seed(config.seed)  # the same fresh background row on every rank
    model, source = load_run_model(config.run, config.weights)
    background = add_background_class(model)
    params = set_trainable(model, config.trainable)
    model.to(worker.device)
    head = ray.train.torch.prepare_model(DetectorHead(model))  # DDP over the trainable layers
    optimizer = build_optimizer(params, config)
    meta = worker.resume(model, optimizer) or {"epoch": 0, "history": []}
    start_epoch, history = meta["epoch"] + 1, meta["history"]
    loader_workers = resolve_loader_workers(config.loader_workers)
    worker.announce(start_epoch, loader_workers=loader_workers)

    rgb_mean = torch.as_tensor(load_stats(config.data)["rgb_mean"], dtype=torch.float32)
    input_scale = float(source.get("input_scale", 1.0))
    # One set of loader processes for the whole run, as in `convplat train`.
    loader = train_detection_loader(
        config.data,
        batch_size=config.per_worker_batch,
        rank=worker.rank,
        world_size=worker.world_size,
        num_workers=loader_workers,
        seed=config.seed,
        shuffle_buffer=config.shuffle_buffer,
    )
    steps = len(loader)  # train_count // --batch-size, on every rank
    if config.limit_train_batches:
        steps = min(steps, config.limit_train_batches)

    for epoch in range(start_epoch, config.epochs + 1):
        generator = worker.epoch_seeds(epoch)
        flips = np.random.default_rng([config.seed, epoch, worker.rank, 19])
        batches = iter(islice(loader.epoch(epoch), steps))
        report = worker.step_reporter(epoch, steps)
        sums = torch.zeros(
            5, dtype=torch.float64
        )  # loss x windows, windows, positives, right, images
        started = time.perf_counter()
        wait = 0.0
        for step in range(steps):
            tick = time.perf_counter()
            samples = next(batches)
            if config.flip:
                samples = [flip_sample(s) if flips.random() < 0.5 else s for s in samples]
            wait += time.perf_counter() - tick
            images = [
                whole_image_input(s.image, rgb_mean, input_scale, worker.device) for s in samples
            ]
            step_sums = _train_step(
                model, head, optimizer, images, samples, config, background, generator
            )
            sums += step_sums
            if report is not None:
                report(step, float(step_sums[0] / max(step_sums[1], 1)))
        seconds = time.perf_counter() - started
        loss_total, windows, positives, right, seen = (float(v) for v in worker.all_reduce(sums))
        check_finite(loss_total, "detection loss")
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
        meta = {"epoch": epoch, "history": history, "config": loop_config["config"]}
        worker.report(metrics, meta, model, optimizer)
        if worker.chief:
            write_jsonl(worker.run, "metrics.jsonl", history)
            worker.run.write_bytes("plots/curves.png", curves_png(history, title=config.run_name))
    worker.save_weights(FINAL_WEIGHTS, model)
