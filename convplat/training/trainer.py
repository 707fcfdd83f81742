"""Ray Train wiring: `fit(config)` runs `train_loop_per_worker` under a TorchTrainer (DDP).

The worker loop is rebuilt from a plain dict (`TrainConfig(**d)`), resumes from
`ray.train.get_checkpoint()` (worker restarts and `--resume` alike), reports exactly once per
epoch on every rank (Ray Train V2 hangs otherwise), and only rank 0 writes files. The driver
shows a progress bar fed by a small Ray queue, since workers have no terminal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import tempfile
import threading
import time
from datetime import datetime
from itertools import islice

import torch
import torch.distributed as dist

from convplat.cluster import ensure_ray
from convplat.config import TrainConfig
from convplat.errors import ConvplatError, DatasetError, ResourceError
from convplat.storage import resolve
from convplat.training.checkpoints import (
    BEST_WEIGHTS,
    CHECKPOINTS,
    FINAL_WEIGHTS,
    LATEST,
    load_training_state,
    read_run_config,
    save_training_state,
    state_dict_bytes,
    write_json,
    write_jsonl,
)


class TrainingError(ConvplatError):
    """Training stopped (diverged, or workers failed more often than --max-failures)."""


# --- the driver -------------------------------------------------------------------------------


def resume_config(run_dir: str, overrides: dict | None = None) -> TrainConfig:
    """The configuration a run recorded, with explicit ``overrides`` (e.g. more epochs)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in read_run_config(run_dir).items() if k in known}
    return TrainConfig(**{**saved, **(overrides or {})})


def fit(config: TrainConfig, resume: str | None = None) -> str:
    """Train ``config.model`` on the shards with Ray Train; returns the run directory.

    With ``resume`` (a run directory; pass :func:`resume_config` as ``config``), training
    continues at the epoch after the run's latest checkpoint, with the identical schedule.
    """
    from convplat.training.data import read_manifest

    if resume:
        run_dir = resolve(resume).uri
    else:
        name = config.run_name or f"{config.model}-{datetime.now():%Y%m%d-%H%M%S}"
        run_dir = (
            resolve(config.out).join(name)
            if "://" not in config.out
            else f"{config.out.rstrip('/')}/{name}"
        )
        config = dataclasses.replace(config, run_name=name)
    # Workers run elsewhere (another cwd, maybe another node): pass absolute paths or URIs.
    config = dataclasses.replace(config, data=resolve(config.data).uri)
    manifest = read_manifest(config.data)
    if manifest["splits"].get("train", {}).get("count", 0) < config.batch_size:
        raise DatasetError(
            f"{config.data}: {manifest['splits'].get('train', {}).get('count', 0)} "
            f"training samples, fewer than one batch of {config.batch_size}; "
            "lower --batch-size"
        )
    run = resolve(run_dir)
    run.fs.create_dir(run.path, recursive=True)
    record = {
        **dataclasses.asdict(config),
        "num_classes": len(manifest["classes"]),
        "classes": [c["wnid"] for c in manifest["classes"]],
        "data_manifest": {"size": manifest["size"], "source": manifest["source"]},
    }
    write_json(run, "config.json", record)

    run_trainer(
        train_loop_per_worker,
        {
            "config": dataclasses.asdict(config),
            "run_dir": run.uri,
            "num_classes": len(manifest["classes"]),
        },
        config,
        storage=run.uri,
    )
    return run.uri


def run_trainer(loop, loop_config: dict, config, storage: str, what: str = "training") -> None:
    """Run ``loop`` on every Ray Train worker (TorchTrainer, DDP) and wait for it.

    The one place that wires Ray Train for convplat's trainers (classification, localization,
    detection): checkpoints under ``<storage>/checkpoints`` (so constructing it again with the
    same storage resumes, as Ray Train V2 wants), ``--max-failures`` restarts, rank 0's progress
    drained into a bar here (``loop_config["progress"]`` is the queue), and a failure turned
    into one :class:`TrainingError` line. ``config`` needs TrainConfig's field names for
    address, gpus, world_size, cpus_per_worker, max_failures, keep_checkpoints, epochs and
    progress.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    ensure_ray(config.address)
    scaling = scaling_config(config)
    progress = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "progress": progress},
        scaling_config=scaling,
        run_config=RunConfig(
            name=CHECKPOINTS,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
    )
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # reported below, in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    _show_progress(thread, progress, config)
    thread.join()
    try:
        ray.kill(progress.actor)
    except Exception:  # noqa: BLE001 - the queue actor may already be gone
        pass
    if "error" in outcome:
        raise TrainingError(f"{what} failed: {_root_cause(outcome['error'])}") from None


def scaling_config(config: TrainConfig):
    import ray
    from ray.train import ScalingConfig

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if config.gpus > gpus:
        raise ResourceError(
            f"--gpus {config.gpus}: the Ray cluster has {gpus} GPU(s); "
            "use --gpus 0 --workers N to train on CPUs"
        )
    per_worker = config.cpus_per_worker or max(1, cpus // config.world_size)
    if per_worker * config.world_size > cpus:
        raise ResourceError(
            f"{config.world_size} workers x {per_worker} CPUs need "
            f"{per_worker * config.world_size} CPUs; the cluster has {cpus}"
        )
    resources_per_worker = {"CPU": per_worker}
    if config.gpus:
        resources_per_worker["GPU"] = 1
    return ScalingConfig(
        num_workers=config.world_size,
        use_gpu=config.gpus > 0,
        resources_per_worker=resources_per_worker,
    )


def _root_cause(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    last = [line for line in text if line.strip()]
    return last[-1] if last else type(error).__name__


def _show_progress(thread: threading.Thread, queue, config: TrainConfig) -> None:
    """Drain rank 0's progress messages into a rich bar and one summary line per epoch."""
    from queue import Empty

    from rich.console import Console

    from convplat.progress import progress_bar

    console = Console(stderr=True)
    with progress_bar(enabled=config.progress) as bar:
        task = None
        while thread.is_alive() or not queue.empty():
            try:
                kind, payload = queue.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - queue actor gone: the run is over
                break
            if kind == "step":
                epoch, step, total, loss = payload
                if task is None:
                    task = bar.add_task(f"epoch {epoch}", total=total, rate="")
                bar.update(
                    task,
                    description=f"epoch {epoch}/{config.epochs}",
                    completed=step,
                    total=total,
                    rate=f"loss {loss:.3f}",
                )
            elif kind == "epoch":
                if task is not None:
                    bar.remove_task(task)
                    task = None
                console.print(_epoch_line(payload))
            elif kind == "event":
                console.print(payload)


def _epoch_line(m: dict) -> str:
    val = (
        ""
        if m.get("top1_err") is None
        else f" val_loss {m['val_loss']:.3f} top-1 err {m['top1_err']:.3f} "
        f"top-5 err {m['top5_err']:.3f}"
    )
    return (
        f"epoch {m['epoch']}: lr {m['lr']:.2g} train_loss {m['train_loss']:.3f}{val} "
        f"{m['images_per_s']:.1f} images/s, data wait {m['data_wait']:.0%}, "
        f"{m['seconds']:.0f} s"
    )


# --- the worker -------------------------------------------------------------------------------


def build_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """Plateau: /10 when validation error stops improving (AlexNet §5); multistep: OverFeat."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            threshold=config.plateau_threshold,
            min_lr=config.min_lr,
        )
    if config.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, list(config.milestones), gamma=config.gamma
        )
    return None


def train_loop_per_worker(loop_config: dict) -> None:
    """The per-worker training function Ray Train runs on every rank."""
    import ray.train
    import ray.train.torch

    from convplat.training.augment import BatchTransform
    from convplat.training.data import eval_loader, load_stats, read_manifest, train_loader
    from convplat.training.loop import evaluate_batches, train_one_epoch
    from convplat.training.models import create_model, reinitialize, renormalize_filters

    config = TrainConfig(**loop_config["config"])
    run = resolve(loop_config["run_dir"])
    queue = loop_config["progress"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    distributed = world > 1
    on_gpu = device.type == "cuda"
    if on_gpu:  # fixed input sizes: let cuDNN pick its fastest kernels once (torchvision refs)
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(config.seed)  # identical init on every rank (DDP also broadcasts)
    model = reinitialize(
        create_model(config.model, num_classes=loop_config["num_classes"]), config.init
    )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = ray.train.torch.prepare_model(model)  # to device, DDP when world > 1
    if config.compile:
        net = torch.compile(net)
    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config)

    history: list[dict] = []
    best: float | None = None
    start_epoch = 1
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            meta = load_training_state(directory, model, optimizer, scheduler)
        start_epoch, history, best = meta["epoch"] + 1, meta["history"], meta.get("best")
        if rank == 0:
            send_progress(queue, "event", f"resumed from checkpoint epoch {meta['epoch']}")
            append_event(run, {"event": "resume", "from_epoch": meta["epoch"], "time": time.time()})

    pids = [os.getpid()] * world
    if distributed:
        dist.all_gather_object(pids, os.getpid())
    if rank == 0:
        append_event(
            run,
            {
                "event": "start",
                "epoch": start_epoch,
                "world_size": world,
                "pids": pids,
                "host": socket.gethostname(),
                "time": time.time(),
            },
        )

    stats = load_stats(config.data)
    train_transform = BatchTransform.from_stats(
        stats,
        lighting_std=config.lighting_std,
        input_scale=config.input_scale,
        channels_last=config.channels_last,
    ).to(device)
    eval_transform = BatchTransform.from_stats(
        stats, lighting_std=0.0, input_scale=config.input_scale, channels_last=config.channels_last
    ).to(device)
    has_val = "val" in read_manifest(config.data)["splits"]
    loader_workers = (
        config.loader_workers
        if config.loader_workers >= 0
        else max(0, (config.cpus_per_worker or 1) - 1)
    )
    renorm_radius = getattr(model, "renormalize_radius", None)

    for epoch in range(start_epoch, config.epochs + 1):
        torch.manual_seed(config.seed * 100_003 + epoch * 101 + rank)  # dropout, per epoch
        generator = torch.Generator(device=device).manual_seed(
            config.seed * 7_919 + epoch * 31 + rank
        )
        batches = train_loader(
            config.data,
            batch_size=config.per_worker_batch,
            epoch=epoch,
            rank=rank,
            world_size=world,
            num_workers=loader_workers,
            seed=config.seed,
            crop_size=model.input_size,
            shuffle_buffer=config.shuffle_buffer,
            pin_memory=on_gpu,  # page-locked batches: the host-to-device copy runs async
        )
        total = len(batches)
        if config.limit_train_batches:
            total = min(total, config.limit_train_batches)
            batches = islice(batches, total)
        on_step = step_reporter(queue, epoch, total) if rank == 0 else None
        train = train_one_epoch(
            net,
            batches,
            train_transform,
            optimizer,
            device,
            amp=config.amp,
            after_step=(lambda: renormalize_filters(model, renorm_radius))
            if renorm_radius
            else None,
            on_step=on_step,
            generator=generator,
        )
        train = _reduce_train(train, device, distributed)
        val_batches = (
            eval_loader(
                config.data,
                "val",
                batch_size=config.per_worker_batch,
                rank=rank,
                world_size=world,
                num_workers=loader_workers,
                crop_size=model.input_size,
                mode="center",
                pin_memory=on_gpu,
            )
            if has_val
            else []
        )
        if config.limit_val_batches:
            val_batches = islice(val_batches, config.limit_val_batches)
        val = evaluate_batches(
            model, val_batches, eval_transform, device, amp=config.amp, distributed=distributed
        )
        lr = optimizer.param_groups[0]["lr"]
        _step_scheduler(scheduler, val, train)
        metrics = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train["train_loss"],
            "val_loss": val["val_loss"],
            "top1_err": val["top1_err"],
            "top5_err": val["top5_err"],
            "val_count": val["count"],
            "images_per_s": train["images_per_s"],
            "seconds": train["seconds"],
            "data_wait": train["data_wait"],
            "time": time.time(),  # epoch end, Unix seconds (TensorBoard's wall time)
        }
        history.append(metrics)
        score = val["top1_err"] if val["top1_err"] is not None else train["train_loss"]
        improved = best is None or score < best
        best = score if improved else best
        meta = {
            "epoch": epoch,
            "history": history,
            "best": best,
            "config": dataclasses.asdict(config),
        }
        report_epoch(rank, epoch, metrics, meta, model, optimizer, scheduler)
        if rank == 0:
            _write_epoch_outputs(run, config, history, model, improved, epoch)
            send_progress(queue, "epoch", metrics)
    if rank == 0:
        run.write_bytes(FINAL_WEIGHTS, state_dict_bytes(model))


def _step_scheduler(scheduler, val: dict, train: dict) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val["top1_err"] if val["top1_err"] is not None else train["train_loss"])
    else:
        scheduler.step()


def _reduce_train(train: dict, device: torch.device, distributed: bool) -> dict:
    """Global train loss and images/s: sums over ranks, the slowest rank's time."""
    if not distributed:
        return train
    sums = torch.tensor(
        [train["train_loss"] * train["images"], train["images"]], dtype=torch.float64, device=device
    )
    slowest = torch.tensor([train["seconds"]], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    loss_sum, images = (float(v) for v in sums)
    seconds = float(slowest)
    return {
        **train,
        "train_loss": loss_sum / max(images, 1),
        "images": int(images),
        "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9),
    }


def _write_epoch_outputs(
    run, config: TrainConfig, history: list[dict], model, improved: bool, epoch: int
) -> None:
    from convplat.training.plots import curves_png
    from convplat.training.tensorboard import EVENT_FILE, event_file_bytes

    write_jsonl(run, "metrics.jsonl", history)
    run.write_bytes("plots/curves.png", curves_png(history, title=config.run_name))
    run.write_bytes(EVENT_FILE, event_file_bytes(history))
    run.write_bytes(f"{CHECKPOINTS}/{LATEST}", f"epoch-{epoch:03d}\n".encode())
    if improved:
        run.write_bytes(BEST_WEIGHTS, state_dict_bytes(model))
        write_json(run, "best.json", history[-1])


def report_epoch(
    rank: int, epoch: int, metrics: dict, meta: dict, model, optimizer, scheduler
) -> None:
    """The one ``ray.train.report`` per epoch every rank must make (Ray Train V2 hangs
    otherwise); rank 0 attaches the ``epoch-NNN`` checkpoint (weights, optimizer, scheduler,
    ``meta``). Metrics that are None (no validation this epoch) are left out."""
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            save_training_state(directory, model, optimizer, scheduler, meta)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(
            {k: v for k, v in metrics.items() if v is not None},
            checkpoint=checkpoint,
            checkpoint_dir_name=f"epoch-{epoch:03d}",
        )


def append_event(run, event: dict) -> None:
    previous = run.read_bytes("events.jsonl") if run.exists("events.jsonl") else b""
    run.write_bytes("events.jsonl", previous + (json.dumps(event) + "\n").encode())


def step_reporter(queue, epoch: int, total: int):
    last = [0.0]

    def report(step: int, loss: torch.Tensor | float) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or step + 1 == total:
            last[0] = now  # float() waits for the device: only twice a second, not every step
            send_progress(queue, "step", (epoch, step + 1, total, float(loss)))

    return report


def send_progress(queue, kind: str, payload) -> None:
    try:
        queue.put_nowait((kind, payload))
    except Exception:  # noqa: BLE001 - progress is best effort; training must not stop for it
        pass
