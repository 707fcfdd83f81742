"""Run directories and checkpoints, loadable without unpickling arbitrary objects.

A checkpoint directory holds ``model.safetensors`` (weights), ``state.pt`` (optimizer,
scheduler and RNG tensors; read with ``torch.load(weights_only=True)``) and ``meta.json``
(epoch, metrics history, best score, configuration). Nothing in them is a pickled object.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from convplat.config.shared import WEIGHTS_CHOICES
from convplat.errors import ConfigError, ConvplatError
from convplat.storage import Location, resolve
from convplat.training.raytrain import CHECKPOINTS

__all__ = ["CHECKPOINTS", "BEST_WEIGHTS", "FINAL_WEIGHTS", "LATEST", "WEIGHTS_CHOICES"]
FINAL_WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"
LATEST = "latest"
CONFUSION = "confusion-val.json"  # the last epoch's validation confusion counts (true, predicted)


def state_dict_bytes(model: nn.Module) -> bytes:
    """Weights as safetensors bytes (contiguous copies, so shared/strided tensors are fine)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(tensors)


def load_weights(
    model: nn.Module,
    data: bytes,
    source: str = "weights",
    assign: bool = False,
    strict: bool = True,
) -> nn.Module:
    """Load safetensors bytes into ``model`` (strict: names and shapes must match).

    ``assign=True`` makes the loaded tensors the model's own (for a model built on the meta
    device, with no memory and no random initialisation to spend time on); ``strict=False``
    accepts a subset of the model's tensors (names and shapes of those given still checked).

    A truncated or foreign file, or weights of another architecture, is one ConvplatError
    line naming ``source`` (the file), not a safetensors or PyTorch traceback.
    """
    state = read_state(data, source)
    try:
        # Only real modules take ``assign`` (column parallelism's state view does not).
        extra = {"assign": True} if assign else {}
        model.load_state_dict(state, strict=strict, **extra)
    except RuntimeError as exc:
        raise ConvplatError(
            f"{source}: weights do not fit {type(model).__name__} ({_first_line(exc)})"
        ) from None
    return model


def read_state(data: bytes, source: str = "weights") -> dict[str, torch.Tensor]:
    """Safetensors bytes -> tensors; a damaged file is one ConvplatError line naming it."""
    try:
        return load_safetensors(data)
    except Exception as exc:  # noqa: BLE001 - SafetensorError is not importable by name
        raise ConvplatError(f"{source}: not a safetensors file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def save_training_state(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    meta: dict,
) -> None:
    """Write one epoch's checkpoint into a local directory (Ray Train then persists it)."""
    directory = Path(directory)
    (directory / FINAL_WEIGHTS).write_bytes(state_dict_bytes(model))
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "rng": torch.get_rng_state(),
    }
    torch.save(state, directory / "state.pt")
    (directory / "meta.json").write_text(json.dumps(meta, indent=1))


def load_training_state(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> dict:
    """Restore a checkpoint written by :func:`save_training_state`; returns its meta."""
    directory = Path(directory)
    load_weights(model, (directory / FINAL_WEIGHTS).read_bytes(), str(directory / FINAL_WEIGHTS))
    state = torch.load(directory / "state.pt", weights_only=True, map_location="cpu")
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"]:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return json.loads((directory / "meta.json").read_text())


def write_json(location: Location, name: str, payload) -> None:
    location.write_bytes(name, json.dumps(payload, indent=2).encode())


def write_jsonl(location: Location, name: str, rows: list[dict]) -> None:
    location.write_bytes(name, "".join(json.dumps(r) + "\n" for r in rows).encode())


def read_run_config(run_dir: str) -> dict:
    """The resolved configuration a run recorded in ``config.json``."""
    location = resolve(run_dir)
    if not location.exists("config.json"):
        raise ConvplatError(
            f"{run_dir} is not a convplat run: no config.json "
            "(expected runs/<model>-<stamp>/ made by `convplat train`)"
        )
    from convplat.config.validate import describe, parse_json_object

    name = location.child("config.json").uri
    config = parse_json_object(location.read_bytes("config.json"), name)
    # What every reader of a run rebuilds its model from: a damaged value is one line here,
    # not a traceback from the model registry or the shard reader.
    missing = [key for key in ("model", "num_classes") if key not in config]
    if missing:
        raise ConfigError(f"{name} lacks {', '.join(missing)}: not a training run")
    for key, kind in (("model", str), ("num_classes", int), ("data", str)):
        value = config.get(key, "")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{name}: {key}: expected {describe(kind)}, got {value!r}")
    if config["num_classes"] < 1:
        raise ConfigError(f"{name}: num_classes: expected >= 1, got {config['num_classes']}")
    return config


def latest_checkpoint(run_dir: str) -> str | None:
    """Path of the newest complete epoch checkpoint of a run, or None.

    ``checkpoints/latest`` names it; should that file be missing, damaged or point at an
    epoch folder that is no longer complete, the newest ``epoch-NNN`` folder holding both
    its weights and ``meta.json`` (written last) is the answer instead.
    """
    location = resolve(run_dir)

    def complete(name: str) -> bool:
        return location.exists(f"{CHECKPOINTS}/{name}/meta.json") and location.exists(
            f"{CHECKPOINTS}/{name}/{FINAL_WEIGHTS}"
        )

    if location.exists(f"{CHECKPOINTS}/{LATEST}"):
        name = location.read_bytes(f"{CHECKPOINTS}/{LATEST}").decode(errors="replace").strip()
        if name and "/" not in name and complete(name):
            return location.join(CHECKPOINTS, name)
    epochs = [n for n in location.names(CHECKPOINTS) if n.startswith("epoch-")]
    for name in sorted(epochs, reverse=True):
        if complete(name):
            return location.join(CHECKPOINTS, name)
    return None


def newest_run(runs_dir: str = "runs", prefix: str = "") -> str:
    """The most recently modified ImageNet classification run under ``runs_dir``.

    Runs of other tasks (a detector's ``config.json`` says ``"task": "detect"``) are skipped:
    their output layer has a background class, so evaluate/transfer must not pick them up.
    """
    root = Path(runs_dir)
    candidates = (
        [
            p
            for p in root.glob(f"{prefix}*")
            if (p / FINAL_WEIGHTS).is_file() and _is_classifier_run(p / "config.json")
        ]
        if root.is_dir()
        else []
    )
    if not candidates:
        raise ConvplatError(
            f"no trained run under {runs_dir}/ (expected a directory with "
            f"{FINAL_WEIGHTS}); run `convplat train` first or pass --checkpoint"
        )
    return str(max(candidates, key=lambda p: (p / FINAL_WEIGHTS).stat().st_mtime))


def _is_classifier_run(config: Path) -> bool:
    try:
        task = json.loads(config.read_text()).get("task", "classify")
    except (OSError, ValueError, AttributeError):
        return False
    return task == "classify"


def load_run_model(run_dir: str, weights: str = "final") -> tuple[nn.Module, dict]:
    """Rebuild a run's model and load its ``final`` / ``best`` / ``latest`` weights.

    A run without the asked-for file (stopped before its end) gives its latest checkpoint's
    weights, and says so on stderr: a result must not pass for the final model's silently.
    """
    from convplat.training.models import create_model

    if weights not in WEIGHTS_CHOICES:
        raise ConfigError(
            f"--weights: expected one of {', '.join(WEIGHTS_CHOICES)}, got {weights!r}"
        )
    config = read_run_config(run_dir)
    location = resolve(run_dir)
    if weights == "latest":
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise ConvplatError(f"{run_dir} has no checkpoint yet")
        name = checkpoint[len(location.path) + 1 :] + "/" + FINAL_WEIGHTS
    else:
        asked = name = FINAL_WEIGHTS if weights == "final" else BEST_WEIGHTS
        if not location.exists(name):
            fallback = latest_checkpoint(run_dir)
            if fallback is None:
                raise ConvplatError(f"{run_dir} has no {name} and no checkpoint")
            name = fallback[len(location.path) + 1 :] + "/" + FINAL_WEIGHTS
            print(
                f"convplat: {run_dir} has no {asked}; using the weights of its "
                f"latest checkpoint, {name}",
                file=sys.stderr,
            )
    model = create_model(config["model"], num_classes=config["num_classes"])
    load_weights(model, location.read_bytes(name), location.child(name).uri)
    return model.eval(), config
