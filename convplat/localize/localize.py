"""OverFeat localization (O §4, PAPERS §3.5): `convplat localize train RUN` / `eval RUN`.

Training freezes the run's conv layers (the paper's layers 1-5), puts a
:class:`~convplat.localize.regressor.BoxRegressor` on the offset-pooled last-conv maps and
fits it with an L2 loss at several scales under Ray Train (one DDP replica of the regressor per
worker, like `convplat train`). Inference runs classifier and regressor at every location and
scale, keeps the top-k classes per scale, greedily merges their boxes
(:func:`~convplat.localize.boxes.greedy_merge`) and scores ILSVRC localization error
(:mod:`convplat.localize.localize_eval`).

Everything is written under ``<RUN>/localize/`` (or ``--out``): ``config.json``,
``metrics.jsonl``, ``regressor.safetensors``, ``checkpoints/``, ``eval-<split>.json`` and
``boxes-<split>.png``.
"""

from __future__ import annotations

import dataclasses
import time
from itertools import islice

import pyarrow.fs as pafs
import torch

from convplat.config.localize import LocalizeConfig
from convplat.config.validate import parse_json_object
from convplat.errors import ConfigError, ConvplatError
from convplat.localize.multiscale import (
    build_regressor,
    check_scales,
    frames_to_inputs,
    freeze_all,
    mirror,
    regression_loss,
)
from convplat.storage import Location, resolve
from convplat.training.checkpoints import load_run_model, read_run_config, write_json, write_jsonl
from convplat.training.raytrain import (
    CHECKPOINTS,
    ERROR_LOG,
    Worker,
    build_optimizer,
    check_finite,
    check_scaling,
    claim_dir,
    run_trainer,
)

OUT_DIR = "localize"
WEIGHTS = "regressor.safetensors"
# What a training writes into its folder (and --overwrite removes; nothing else is touched).
OUTPUTS = (WEIGHTS, "config.json", "metrics.jsonl", "events.jsonl", ERROR_LOG)


def output_dir(run: str, out: str = "") -> str:
    """Where a run's localization lives: ``out`` or ``<run>/localize`` (URIs keep their scheme)."""
    return resolve(out).uri if out else resolve(run).child(OUT_DIR).uri


def train_localizer(config: LocalizeConfig) -> str:
    """`convplat localize train`: fit the box regressor with Ray Train; returns the output dir.

    The folder must be new, or ``overwrite`` replaces what an earlier training wrote there
    (its checkpoints too, so Ray Train starts afresh). Nothing is written before the shards
    and the cluster's resources are checked.
    """
    from convplat.localize.box_data import boxed_count
    from convplat.pipeline.shardset import read_manifest

    record = read_run_config(config.run)
    if record.get("task", "classify") != "classify":
        raise ConfigError(
            f"{config.run} is a {record['task']} run, not a classification run; pass the run "
            f"it was trained from ({record.get('source_run', 'its source run')})"
        )
    check_scales(record["model"], record["num_classes"], config.scales, config.stride)
    # Damaged or missing weights: one line now, not a failure in every Ray worker later.
    load_run_model(config.run, config.weights)
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
    if out.fs.get_file_info(out.path).type == pafs.FileType.File:
        raise ConvplatError(f"--out {out.uri}: a file, not a directory")
    taken = f"{out.uri} exists; pass --overwrite to replace its regressor or --out DIR for another"
    if out.is_dir() and not config.overwrite:
        raise ConvplatError(taken)
    scaling = check_scaling(config)
    if config.overwrite:
        clear_outputs(out)
    elif not claim_dir(out):
        raise ConvplatError(taken)
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
        scaling=scaling,
    )
    return out.uri


def clear_outputs(out: Location) -> None:
    """Remove what an earlier `localize train` wrote in ``out`` (its own names only).

    A folder whose config.json is not a localization record (a classification run given as
    ``--out``) is refused: its config.json, metrics and checkpoints are not ours to delete.
    """
    if out.exists("config.json"):
        name = out.child("config.json").uri
        record = parse_json_object(out.read_bytes("config.json"), name)
        if not {"per_class", "hidden", "min_inside"} <= record.keys():
            raise ConvplatError(
                f"{out.uri} holds a config.json that `convplat localize train` did not write "
                "(a run?); --overwrite replaces only a regressor: choose another --out"
            )
    out.fs.create_dir(out.path, recursive=True)
    if out.is_dir(CHECKPOINTS):  # else Ray Train would resume the old regressor
        out.fs.delete_dir(out.join(CHECKPOINTS))
    for name in OUTPUTS:
        if out.exists(name):
            out.fs.delete_file(out.join(name))


def _epoch_line(m: dict) -> str:
    val = "" if m.get("val_loss") is None else f" val_l2 {m['val_loss']:.4f}"
    return (
        f"epoch {m['epoch']}: train_l2 {m['train_loss']:.4f}{val} "
        f"{m['images_per_s']:.1f} images/s, {m['seconds']:.0f} s"
    )


def localize_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: frozen classifier run + one DDP replica of the box regressor."""
    import ray.train.torch

    from convplat.localize.box_data import eval_box_loader, train_box_loader
    from convplat.pipeline.shardset import load_stats, read_manifest
    from convplat.training.augment import BatchTransform
    from convplat.training.checkpoints import load_run_model
    from convplat.training.trainer import resolve_loader_workers

    config = LocalizeConfig(**loop_config["config"])
    worker = Worker.from_context(loop_config, config.seed)
    device = worker.device
    loader_workers = resolve_loader_workers(config.loader_workers)
    shares = dict(
        batch_size=config.per_worker_batch,
        rank=worker.rank,
        world_size=worker.world_size,
        num_workers=loader_workers,
        pin_memory=device.type == "cuda",  # async host-to-device copies, as in `train`
    )

    model, record = load_run_model(config.run, config.weights)
    model = freeze_all(model).to(device)
    torch.manual_seed(config.seed)  # identical init on every rank (DDP also broadcasts)
    regressor = build_regressor(model, loop_config["config"])
    net = ray.train.torch.prepare_model(regressor)  # to device, DDP when world > 1
    optimizer = build_optimizer(regressor.parameters(), config)
    transform = BatchTransform.from_stats(
        load_stats(config.data), lighting_std=0.0, input_scale=record.get("input_scale", 1.0)
    ).to(device)
    has_val = "val" in read_manifest(config.data)["splits"]
    meta = worker.resume(regressor, optimizer) or {"epoch": 0, "history": []}
    start, history = meta["epoch"] + 1, meta["history"]
    worker.announce(start, loader_workers=loader_workers)

    # One set of loader processes for the whole run, as in `convplat train`.
    loader = train_box_loader(config.data, seed=config.seed, **shares)
    for epoch in range(start, config.epochs + 1):
        generator = worker.epoch_seeds(epoch)
        total = len(loader)
        if config.limit_train_batches:
            total = min(total, config.limit_train_batches)
        batches = islice(loader.epoch(epoch), total)
        report = worker.step_reporter(epoch, total)
        net.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss x windows, windows, images
        started = time.perf_counter()
        for step, batch in enumerate(batches):
            flips = torch.randint(0, 2, (len(batch.labels),), generator=generator) * config.flip
            images = batch.images.to(device, non_blocking=True)
            images = frames_to_inputs(images, transform, flips.to(device))
            boxes = [
                mirror(b, images.shape[-1]) if f else b
                for b, f in zip(batch.boxes, flips.tolist(), strict=True)
            ]
            labels = batch.labels.to(device)
            loss, count = regression_loss(
                model, net, images, labels, boxes, config.scales, config.stride, config.min_inside
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.tensor([float(loss) * count, count, len(labels)], dtype=torch.float64)
            if report is not None:
                report(step, float(loss))
        seconds = time.perf_counter() - started
        loss_sum, windows, images_seen = (float(v) for v in worker.all_reduce(sums))
        check_finite(loss_sum, "regression loss")
        val_batches = eval_box_loader(config.data, "val", **shares) if has_val else []
        if config.limit_val_batches:
            val_batches = islice(val_batches, config.limit_val_batches)
        metrics = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_sum / max(windows, 1.0),
            "train_windows": int(windows),
            "val_loss": validation_loss(model, net, val_batches, transform, config, worker),
            "images_per_s": images_seen / max(seconds, 1e-9),
            "seconds": seconds,
        }
        history.append(metrics)
        meta = {"epoch": epoch, "history": history, "config": loop_config["config"]}
        worker.report(metrics, meta, regressor, optimizer, line=_epoch_line(metrics))
        if worker.chief:
            write_jsonl(worker.run, "metrics.jsonl", history)
    worker.save_weights(WEIGHTS, regressor)


def validation_loss(model, regressor, batches, transform, config, worker: Worker) -> float | None:
    """Mean L2 loss over the validation windows (every rank's share, summed); None when no
    validation window has a box."""
    module = regressor.module if hasattr(regressor, "module") else regressor
    module.eval()
    loss_sum, windows = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            images = frames_to_inputs(batch.images.to(worker.device), transform)
            loss, count = regression_loss(
                model,
                module,
                images,
                batch.labels.to(worker.device),
                batch.boxes,
                config.scales,
                config.stride,
                config.min_inside,
            )
            loss_sum += float(loss) * count
            windows += count
    sums = worker.all_reduce(torch.tensor([loss_sum, windows], dtype=torch.float64))
    return float(sums[0] / sums[1]) if float(sums[1]) > 0 else None
