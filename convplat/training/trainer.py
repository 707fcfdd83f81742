"""`convplat train`: `fit(config)` runs `train_loop_per_worker` under a TorchTrainer (DDP).

The worker loop is a plain PyTorch loop rebuilt from a dict (`TrainConfig(**d)`); the Ray
Train wiring it shares with localization and detection (resume from
`ray.train.get_checkpoint()`, seeds, the one report per epoch, rank-0 outputs, the driver's
progress bar) is :mod:`convplat.training.raytrain`.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from itertools import islice

import torch

from convplat.config import TrainConfig
from convplat.errors import DatasetError
from convplat.storage import resolve
from convplat.training.checkpoints import (
    BEST_WEIGHTS,
    CONFUSION,
    FINAL_WEIGHTS,
    state_dict_bytes,
    write_json,
    write_jsonl,
)
from convplat.training.raytrain import (
    Worker,
    build_optimizer,
    check_scaling,
    new_run_dir,
    run_name,
    run_trainer,
)

# What `--resume` can change in a run; anything else would train another run in its
# checkpoints (a model or batch size that does not fit, another schedule).


# --- the driver -------------------------------------------------------------------------------


def resume_config(run_dir: str, overrides: dict | None = None) -> TrainConfig:
    """The configuration a run recorded, with the ``overrides`` a resume can honour; any other
    setting given with a value the run did not record is refused (see
    :func:`convplat.config.resume_train_config`)."""
    from convplat.config import resume_train_config

    return resume_train_config(run_dir, overrides)


def fit(config: TrainConfig, resume: str | None = None) -> str:
    """Train ``config.model`` on the shards with Ray Train; returns the run directory.

    A new run gets a new directory (an existing ``run_name`` is refused); nothing is written
    before the shards and the cluster's resources are checked. With ``resume`` (a run
    directory; pass :func:`resume_config` as ``config``), training continues at the epoch
    after the run's latest checkpoint, with the identical schedule.
    """
    # Workers run elsewhere (another cwd, maybe another node): pass absolute paths or URIs.
    config = dataclasses.replace(config, data=resolve(config.data).uri)
    manifest = check_shards(config)
    scaling = check_scaling(config)
    if resume:
        run = resolve(resume)
    else:
        name = config.run_name or f"{config.model}-{datetime.now():%Y%m%d-%H%M%S}"
        run = new_run_dir(config.out, name, given=bool(config.run_name))
        config = dataclasses.replace(config, run_name=run_name(run))
    record = {
        **dataclasses.asdict(config),
        "num_classes": len(manifest["classes"]),
        "classes": [c["wnid"] for c in manifest["classes"]],
        "data_manifest": {"size": manifest["size"], "source": manifest["source"]},
    }
    write_json(run, "config.json", record)

    run_trainer(
        train_loop_per_worker,
        {"config": dataclasses.asdict(config), "num_classes": len(manifest["classes"])},
        config,
        storage=run.uri,
        scaling=scaling,
    )
    return run.uri


def check_shards(config: TrainConfig) -> dict:
    """``config.data``'s manifest, once the shards are known to fit the run: at least one
    batch of training samples, and images no smaller than the model's crops (both would
    fail on the workers, after the cluster started and the run directory was made)."""
    from convplat.pipeline.shardset import read_manifest
    from convplat.training.models import input_size

    manifest = read_manifest(config.data)
    count = manifest["splits"].get("train", {}).get("count", 0)
    if count < config.batch_size:
        raise DatasetError(
            f"{config.data}: {count} training samples, fewer than one batch of "
            f"{config.batch_size}; lower --batch-size"
        )
    crop, size = input_size(config.model), manifest["size"]
    if crop > size:
        raise DatasetError(
            f"{config.data}: its images are {size}x{size}, smaller than {config.model}'s "
            f"{crop}x{crop} crops; prepare them with --size {crop} or more (the papers: 256)"
        )
    return manifest


# --- the worker -------------------------------------------------------------------------------


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
    import ray.train.torch

    from convplat.pipeline.shardset import read_manifest
    from convplat.training.data import TrainLoader, eval_loader
    from convplat.training.loop import evaluate_batches, train_one_epoch
    from convplat.training.models import renormalize_filters

    config = TrainConfig(**loop_config["config"])
    worker = Worker.from_context(loop_config, config.seed)
    device, on_gpu = worker.device, worker.device.type == "cuda"
    if on_gpu:  # fixed input sizes: let cuDNN pick its fastest kernels once (torchvision refs)
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(config.seed)  # identical init on every rank (DDP also broadcasts)
    model = build_model(config, loop_config["num_classes"])
    data = DataParallel(worker, ray.train.torch.prepare_model, config.parallel, device)
    net = data.wrap(model)  # DDP (or one of AlexNet's columns)
    model = data.columns.model if data.columns else model  # the module itself
    if config.compile:
        net = torch.compile(net)
    optimizer = build_optimizer(model.parameters(), config)
    scheduler = build_scheduler(optimizer, config)
    meta = worker.resume(*data.loaders(model, optimizer), scheduler)
    meta = meta or {"epoch": 0, "history": []}
    start_epoch, history, best = meta["epoch"] + 1, meta["history"], meta.get("best")
    loader_workers = resolve_loader_workers(config.loader_workers)
    worker.announce(start_epoch, loader_workers=loader_workers, parallel=config.parallel)

    train_transform, eval_transform = build_transforms(config, device)
    has_val = "val" in read_manifest(config.data)["splits"]
    radius = getattr(model, "renormalize_radius", None)  # ZFNet §3: renormalise conv filters
    after_step = (lambda: renormalize_filters(model, radius)) if radius else None
    shared = dict(batch_size=config.per_worker_batch, rank=data.rank, crop_size=model.input_size)
    shared.update(world_size=data.world_size, num_workers=loader_workers, pin_memory=on_gpu)

    state = None
    # One set of loader processes for the whole run (no fork per epoch).
    loader = TrainLoader(
        config.data, seed=config.seed, shuffle_buffer=config.shuffle_buffer, **shared
    )
    for epoch in range(start_epoch, config.epochs + 1):
        generator = worker.epoch_seeds(epoch, device, data_rank=data.rank)
        batches = loader.epoch(epoch)
        total = len(batches)
        if config.limit_train_batches:
            total = min(total, config.limit_train_batches)
            batches = islice(batches, total)
        train = train_one_epoch(
            net,
            batches,
            train_transform,
            optimizer,
            device,
            amp=config.amp,
            after_step=after_step,
            on_step=worker.step_reporter(epoch, total),
            generator=generator,
            before_step=data.before_step,
            label_smoothing=config.label_smoothing,
        )
        train = _reduce_train(train, worker, data)
        val_batches = eval_loader(config.data, "val", mode="center", **shared) if has_val else []
        if config.limit_val_batches:
            val_batches = islice(val_batches, config.limit_val_batches)
        val = evaluate_batches(
            model,
            val_batches,
            eval_transform,
            device,
            amp=config.amp,
            distributed=data.distributed,
            group=data.group,
            num_classes=loop_config["num_classes"] if epoch == config.epochs else 0,
        )
        confusion = val.pop("confusion", None)
        lr = optimizer.param_groups[0]["lr"]
        _step_scheduler(scheduler, val, train)
        history.append(_epoch_metrics(epoch, lr, train, val))
        score = val["top1_err"] if val["top1_err"] is not None else train["train_loss"]
        improved = best is None or score < best
        best = score if improved else best
        meta = {"epoch": epoch, "history": history, "best": best, "config": loop_config["config"]}
        state, optimizer_state = data.snapshot(model, optimizer)
        worker.report(history[-1], meta, state, optimizer_state, scheduler)
        if worker.chief:
            _write_epoch_outputs(worker.run, config, history, state, improved, confusion)
    if state is None:  # resumed after the last epoch: nothing trained, the weights as they are
        state, _ = data.snapshot(model, optimizer)
    worker.save_weights(FINAL_WEIGHTS, state)


def build_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The registry's model, initialised as ``config.init`` says, in its memory format."""
    from convplat.training.models import create_model, reinitialize

    model = reinitialize(create_model(config.model, num_classes=num_classes), config.init)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def build_transforms(config: TrainConfig, device: torch.device):
    """The on-device batch transforms: training (with PCA lighting) and evaluation."""
    from convplat.pipeline.shardset import load_stats
    from convplat.training.augment import BatchTransform

    stats = load_stats(config.data)
    options = dict(input_scale=config.input_scale, channels_last=config.channels_last)
    return (
        # One output buffer for every training batch (a new 38.5 MB float batch per step
        # cost ~35 % of the loader's rate, benchmarks/loader.py).
        BatchTransform.from_stats(
            stats, lighting_std=config.lighting_std, reuse_output=True, **options
        ).to(device),
        BatchTransform.from_stats(stats, lighting_std=0.0, **options).to(device),
    )


def resolve_loader_workers(requested: int) -> int:
    """``-1``: one loader process fewer than the CPUs Ray gave this worker (at least 0)."""
    if requested >= 0:
        return requested
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(0, int(cpus) - 1)


def _epoch_metrics(epoch: int, lr: float, train: dict, val: dict) -> dict:
    return {
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


def _step_scheduler(scheduler, val: dict, train: dict) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val["top1_err"] if val["top1_err"] is not None else train["train_loss"])
    else:
        scheduler.step()


class DataParallel:
    """How the ranks share the work: DDP (``data``: every rank its own batches), or AlexNet's
    columns (``columns``: the two ranks of a pair hold one column each and read the same
    batches, pairs are data parallel; :mod:`convplat.training.columns`)."""

    def __init__(self, worker: Worker, prepare_model, parallel: str, device) -> None:
        self.worker, self.prepare_model, self.device = worker, prepare_model, device
        self.columns = None
        self.parallel = parallel

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.parallel != "columns":
            return self.prepare_model(model)  # to device, DDP when world > 1
        from convplat.training.columns import ColumnTraining

        self.columns = ColumnTraining(model, self.worker.rank, self.worker.world_size, self.device)
        return self.columns.model

    @property
    def rank(self) -> int:
        return self.columns.data_rank if self.columns else self.worker.rank

    @property
    def world_size(self) -> int:
        return self.columns.data_world_size if self.columns else self.worker.world_size

    @property
    def distributed(self) -> bool:
        return self.columns.distributed if self.columns else self.worker.distributed

    @property
    def group(self):
        return self.columns.group if self.columns else None

    @property
    def before_step(self):
        return self.columns.before_step if self.columns else None

    def loaders(self, model, optimizer):
        """What a checkpoint loads into (for columns: this rank's rows of the full state)."""
        return self.columns.loaders(optimizer) if self.columns else (model, optimizer)

    def snapshot(self, model, optimizer):
        """What a checkpoint saves: the model (for columns: the gathered full state; every
        rank must call this)."""
        return self.columns.snapshot(optimizer) if self.columns else (model, optimizer)


def _reduce_train(train: dict, worker: Worker, data: DataParallel) -> dict:
    """Global train loss and images/s: sums over the data-parallel ranks, the slowest time."""
    if not data.distributed:
        return train
    loss_sum, images = (
        float(v)
        for v in worker.all_reduce(
            torch.tensor(
                [train["train_loss"] * train["images"], train["images"]], dtype=torch.float64
            ),
            group=data.group,
        )
    )
    seconds = float(worker.all_reduce(torch.tensor([train["seconds"]], dtype=torch.float64), "max"))
    return {
        **train,
        "train_loss": loss_sum / max(images, 1),
        "images": int(images),
        "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9),
    }


def _write_epoch_outputs(
    run, config: TrainConfig, history: list[dict], model, improved: bool, confusion=None
):
    """Rank 0's files after each epoch: metrics, curves, TensorBoard events, best weights, and
    after the last one the validation confusion matrix (for ``convplat report``)."""
    from convplat.training.plots import curves_png
    from convplat.training.tensorboard import EVENT_FILE, event_file_bytes

    write_jsonl(run, "metrics.jsonl", history)
    run.write_bytes("plots/curves.png", curves_png(history, title=config.run_name))
    run.write_bytes(EVENT_FILE, event_file_bytes(history))
    if improved:
        run.write_bytes(BEST_WEIGHTS, state_dict_bytes(model))
        write_json(run, "best.json", history[-1])
    if confusion is not None:
        write_json(run, CONFUSION, {"split": "val", "weights": "final", "counts": confusion})
