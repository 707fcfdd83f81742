"""The Ray Train worker kit: everything convplat's three trainers (classification,
localization, detection) do around their own epoch, written once.

Driver side: :func:`check_scaling` (the resource check, before anything is written),
:func:`new_run_dir` (created exclusively), :func:`run_trainer` (TorchTrainer, the progress
bar, ``error.log``). Worker side: :class:`Worker` (rank, device, resume from
``ray.train.get_checkpoint()``, the per-epoch seeds, all-reduce, the one report per epoch,
rank-0 outputs), :func:`build_optimizer` and :func:`check_finite`. A worker loop then reads
like Ray Train's own examples: a plain PyTorch loop with a handful of ``worker.`` calls.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow.fs as pafs
import torch
import torch.distributed as dist

from convplat.errors import ConfigError, ConvplatError, ResourceError
from convplat.storage import Location, resolve

ERROR_LOG = "error.log"
CHECKPOINTS = "checkpoints"  # Ray Train's storage_path/name below the run directory


class TrainingError(ConvplatError):
    """Training stopped (diverged, or workers failed more often than --max-failures)."""


class ScalingSettings(Protocol):
    """The config fields the driver side reads (TrainConfig, LocalizeConfig, DetectConfig)."""

    @property
    def address(self) -> str | None: ...
    @property
    def gpus(self) -> int: ...
    @property
    def workers(self) -> int: ...
    @property
    def cpus_per_worker(self) -> int: ...
    @property
    def max_failures(self) -> int: ...
    @property
    def keep_checkpoints(self) -> int: ...
    @property
    def epochs(self) -> int: ...
    @property
    def progress(self) -> bool: ...
    @property
    def world_size(self) -> int: ...


class OptimizerSettings(Protocol):
    """The config fields :func:`build_optimizer` reads."""

    @property
    def optimizer(self) -> str: ...
    @property
    def lr(self) -> float: ...
    @property
    def momentum(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...


# --- the driver -------------------------------------------------------------------------------


def check_scaling(config: ScalingSettings):
    """Connect to Ray and check the cluster has what ``config`` asks for; returns Ray Train's
    ScalingConfig. Call it before writing anything, so a refused run leaves nothing behind."""
    import ray
    from ray.train import ScalingConfig

    from convplat.cluster import ensure_ray

    if config.gpus > 0 and config.workers > 1:
        raise ConfigError(
            f"--workers {config.workers} with --gpus {config.gpus}: GPU training runs one "
            "worker per GPU; pass --gpus N alone, or --gpus 0 --workers N for CPUs"
        )
    ensure_ray(config.address)
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


def new_run_dir(
    parent: str | Location,
    name: str,
    *,
    given: bool = True,
    hint: str = "use --resume {dir} to continue it",
) -> Location:
    """Create the run directory ``parent/name`` exclusively and return it.

    A ``given`` name that exists is refused (``hint`` says what to do instead): the run it
    names belongs to someone. A generated name (a timestamp) that exists gets a ``-2``,
    ``-3`` ... suffix, so two runs started in the same second get two directories.
    """
    if name in ("", ".", "..") or "/" in name:
        raise ConvplatError(f"run name {name!r}: expected a directory name, not a path")
    parent = resolve(parent) if isinstance(parent, str) else parent
    for attempt in range(1, 1000):
        candidate = parent.child(name if attempt == 1 else f"{name}-{attempt}")
        if claim_dir(candidate):
            return candidate
        if given:
            raise ConvplatError(f"{candidate.uri} exists; {hint.format(dir=candidate.uri)}")
    raise ConvplatError(f"{parent.uri}: no free name for {name}")


def run_name(location: Location) -> str:
    """The last part of a run directory's path (with any ``-2`` suffix it was given)."""
    return location.path.rstrip("/").rsplit("/", 1)[-1]


def claim_dir(location: Location) -> bool:
    """Create the directory ``location`` (and its parents); False when it already existed.

    Atomic on a local filesystem (``os.mkdir``), so of two runs racing for one name exactly
    one wins; object stores have no exclusive create, so there it is a check, then a create.
    A directory that cannot be made (a parent is a file, read-only, the name too long ...) is
    one ConvplatError line.
    """
    try:
        return _claim_dir(location)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConvplatError(f"cannot create {location.uri}: {reason}") from None


def _claim_dir(location: Location) -> bool:
    if isinstance(location.fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(location.path.rstrip("/")), exist_ok=True)
        try:
            os.mkdir(location.path)
        except FileExistsError:
            return False
        return True
    if location.fs.get_file_info(location.path).type != pafs.FileType.NotFound:
        return False
    location.fs.create_dir(location.path, recursive=True)
    return True


def run_trainer(
    loop: Callable[[dict], None],
    loop_config: dict,
    config: ScalingSettings,
    storage: str,
    what: str = "training",
    scaling=None,
) -> None:
    """Run ``loop`` on every Ray Train worker (TorchTrainer, DDP) and wait for it.

    Checkpoints go under ``<storage>/checkpoints`` (constructing the trainer again with the
    same storage resumes, as Ray Train V2 wants); the loop gets ``loop_config`` plus
    ``run_dir`` (``storage``) and ``progress_queue`` (the queue rank 0 feeds the bar here). A
    failure becomes one :class:`TrainingError` line naming ``<storage>/error.log``, which holds
    every worker's full traceback.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    scaling = scaling or check_scaling(config)
    progress = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "run_dir": storage, "progress_queue": progress},
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
        error = outcome["error"]
        log = resolve(storage)
        log.write_bytes(ERROR_LOG, error_report(error).encode())
        raise TrainingError(
            f"{what} failed: {root_cause(error)} (full traceback in {log.child(ERROR_LOG).uri})"
        ) from None


def error_report(error: BaseException) -> str:
    """The full text of a failed fit: the driver's exception and every worker's traceback."""
    parts = ["".join(traceback.format_exception(error))]
    for rank, failure in sorted(getattr(error, "worker_failures", {}).items()):
        parts.append(f"\n--- worker rank {rank} ---\n")
        parts.append("".join(traceback.format_exception(failure)))
        parts.append(str(failure) + "\n")
    return "".join(parts)


def root_cause(error: BaseException) -> str:
    """The last non-empty line of an error: for a worker failure, the worker's exception.

    convplat's own errors are written for users, so their class name is dropped; any other
    exception keeps its name (``RuntimeError: ...`` says what kind of failure it was).
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return re.sub(r"^convplat\.[\w.]+: ", "", lines[-1].strip())


def _show_progress(thread: threading.Thread, queue, config: ScalingSettings) -> None:
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
                console.print(payload)
            elif kind == "event":
                console.print(payload)


def epoch_line(m: dict) -> str:
    """The summary line of a classification epoch (detection shares its keys)."""
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


def build_optimizer(params, config: OptimizerSettings) -> torch.optim.Optimizer:
    """Adam or SGD with momentum, as ``config`` says (every trainer's one builder)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def check_finite(loss: float, what: str = "training loss") -> None:
    """Stop a diverged run at once (every rank sees the same all-reduced value)."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"{what} diverged ({loss}); lower --lr")


@dataclass
class Worker:
    """One Ray Train worker's view of the run: who it is, where it writes, how it reports."""

    rank: int
    world_size: int
    device: torch.device
    run: Location  # rank 0 writes the run's outputs here
    queue: Any  # rank 0's progress messages to the driver's bar
    seed: int

    @classmethod
    def from_context(cls, loop_config: dict, seed: int) -> Worker:
        """The worker as Ray Train started it (inside ``train_loop_per_worker``)."""
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        return cls(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=ray.train.torch.get_device(),
            run=resolve(loop_config["run_dir"]),
            queue=loop_config["progress_queue"],
            seed=seed,
        )

    @property
    def chief(self) -> bool:
        """Rank 0: the one that writes files and feeds the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def resume(self, model, optimizer=None, scheduler=None) -> dict | None:
        """Load the latest checkpoint (a restarted worker group, or ``--resume``) into the
        model, optimizer and scheduler; returns its meta (``epoch``, ``history``, ...) or None."""
        import ray.train

        from convplat.training.checkpoints import load_training_state

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            meta = load_training_state(directory, model, optimizer, scheduler)
        if self.chief:
            self.say(f"resumed from checkpoint epoch {meta['epoch']}")
            append_event(self.run, {"event": "resume", "from_epoch": meta["epoch"]})
        return meta

    def announce(self, start_epoch: int, **extra) -> None:
        """The ``start`` event in ``events.jsonl``: first epoch, world size, every rank's pid
        and Ray node id (on a cluster: which machines the run really used)."""
        import ray

        here = (os.getpid(), ray.get_runtime_context().get_node_id())
        ranks = [here] * self.world_size
        if self.distributed:
            dist.all_gather_object(ranks, here)
        if self.chief:
            event = {
                "event": "start",
                "epoch": start_epoch,
                "world_size": self.world_size,
                "pids": [pid for pid, _ in ranks],
                "nodes": [node for _, node in ranks],
                "host": socket.gethostname(),
                **extra,
            }
            append_event(self.run, event)

    def epoch_seeds(
        self, epoch: int, device: torch.device | str = "cpu", data_rank: int | None = None
    ) -> torch.Generator:
        """Seed the global RNG (dropout) and return a generator (augmentation) for ``epoch``:
        different on every rank and epoch, identical when a run is resumed or restarted.
        Ranks that share a ``data_rank`` (the two columns of a pair) augment alike."""
        torch.manual_seed(self.seed * 100_003 + epoch * 101 + self.rank)
        stream = self.rank if data_rank is None else data_rank
        return torch.Generator(device=device).manual_seed(self.seed * 7_919 + epoch * 31 + stream)

    def all_reduce(self, values: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
        """Sum (or ``max``) ``values`` over the ranks (of ``group``, default all); returned on
        the tensor's own device."""
        if not self.distributed:
            return values
        reduced = values.to(self.device)
        reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
        dist.all_reduce(reduced, op=reduce_op, group=group)
        return reduced.to(values.device)

    def step_reporter(self, epoch: int, total: int):
        """Rank 0's ``on_step(step, loss)`` for the progress bar; None on the other ranks."""
        return step_reporter(self.queue, epoch, total) if self.chief else None

    def say(self, line: str) -> None:
        """A line under the driver's progress bar (rank 0 only)."""
        if self.chief:
            send_progress(self.queue, "event", line)

    def report(
        self, metrics: dict, meta: dict, model, optimizer, scheduler=None, line: str = ""
    ) -> None:
        """End of an epoch on every rank: the one ``ray.train.report`` with rank 0's
        ``epoch-NNN`` checkpoint, then rank 0 marks it ``checkpoints/latest`` and prints
        ``line`` (default: the classification epoch line)."""
        from convplat.training.checkpoints import LATEST

        epoch = metrics["epoch"]
        report_epoch(self.rank, epoch, metrics, meta, model, optimizer, scheduler)
        if self.chief:
            self.run.write_bytes(f"{CHECKPOINTS}/{LATEST}", f"epoch-{epoch:03d}\n".encode())
            send_progress(self.queue, "epoch", line or epoch_line(metrics))

    def save_weights(self, name: str, model) -> None:
        """Rank 0 writes ``model``'s weights to ``name`` in the run directory."""
        from convplat.training.checkpoints import state_dict_bytes

        if self.chief:
            self.run.write_bytes(name, state_dict_bytes(model))


def report_epoch(
    rank: int, epoch: int, metrics: dict, meta: dict, model, optimizer, scheduler
) -> None:
    """The one ``ray.train.report`` per epoch every rank must make (Ray Train V2 hangs
    otherwise); rank 0 attaches the ``epoch-NNN`` checkpoint (weights, optimizer, scheduler,
    ``meta``). Metrics that are None (no validation this epoch) are left out."""
    import ray.train

    from convplat.training.checkpoints import save_training_state

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


def append_event(run: Location, event: dict) -> None:
    """One line in ``events.jsonl`` (start, resume), stamped with the time."""
    previous = run.read_bytes("events.jsonl") if run.exists("events.jsonl") else b""
    line = json.dumps({**event, "time": time.time()}) + "\n"
    run.write_bytes("events.jsonl", previous + line.encode())


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
