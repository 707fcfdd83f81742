"""An ImageNet run's weights for transfer and feature export: the newest run, a run directory
or a ``.safetensors`` file inside one, with the configuration the weights were trained with."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convplat.errors import ConvplatError
from convplat.training.checkpoints import (
    BEST_WEIGHTS,
    FINAL_WEIGHTS,
    latest_checkpoint,
    load_weights,
    read_run_config,
)
from convplat.training.models import ConvNet, create_model


@dataclass(frozen=True)
class Checkpoint:
    """An ImageNet model's weights and the run configuration they came with."""

    run_dir: str
    file: str
    model: str
    num_classes: int
    input_scale: float
    data: str  # the ImageNet shards directory (stats.npz: the mean image)
    sha256: str
    weights: bytes = field(repr=False)
    init: str = "paper"  # the run's initialisation scheme, reused by the scratch baseline

    def build(self) -> ConvNet:
        """A fresh model with these weights, in eval mode."""
        return build_model(self.model, self.num_classes, self.weights)

    @property
    def input_size(self) -> int:
        """The model's crop size (built on the meta device: no weights, no time)."""
        with torch.device("meta"):
            return create_model(self.model, num_classes=self.num_classes).input_size


def build_model(name: str, num_classes: int, weights: bytes) -> ConvNet:
    model = create_model(name, num_classes=num_classes)
    load_weights(model, weights)
    return model.eval()


def _run_dir_of(file: Path) -> Path:
    """The run directory above a weights file (the nearest parent with config.json)."""
    for parent in list(file.parents)[:4]:
        if (parent / "config.json").is_file():
            return parent
    raise ConvplatError(
        f"--checkpoint: no config.json above {file}: expected a .safetensors file inside a run "
        "directory made by `convplat train`"
    )


def load_checkpoint(checkpoint: str | None = None, runs: str = "runs") -> Checkpoint:
    """The newest run under ``runs`` (or ``checkpoint``: a run directory or a ``.safetensors``
    file inside one), with its weight bytes and their sha256.

    A run directory contributes ``model.safetensors``, else ``best.safetensors``, else its latest
    epoch checkpoint.

    Raises:
        ConvplatError: nothing found, or not a convplat run.
    """
    from convplat.training.checkpoints import newest_run

    if checkpoint is None:
        run_dir = Path(newest_run(runs))
        file = run_dir / FINAL_WEIGHTS
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise ConvplatError(
                f"--checkpoint: {checkpoint} does not exist: expected a run directory "
                "(runs/<model>-<stamp>) or a .safetensors file inside one"
            )
        if path.is_dir():
            run_dir = path
            file = path / FINAL_WEIGHTS
            if not file.is_file():
                file = path / BEST_WEIGHTS
            if not file.is_file():
                latest = latest_checkpoint(str(path))
                if latest is None:
                    raise ConvplatError(
                        f"--checkpoint: {checkpoint} has no {FINAL_WEIGHTS}, {BEST_WEIGHTS} or "
                        "epoch checkpoint; train it first or pass another run"
                    )
                file = Path(latest) / FINAL_WEIGHTS
        else:
            if path.suffix != ".safetensors":
                raise ConvplatError(
                    f"--checkpoint: expected a run directory or a .safetensors file, got {path}"
                )
            file = path
            run_dir = _run_dir_of(path.resolve())
    config = read_run_config(str(run_dir))
    missing = [k for k in ("model", "num_classes", "data") if k not in config]
    if missing:
        raise ConvplatError(f"{run_dir}/config.json lacks {', '.join(missing)}: not a training run")
    weights = file.read_bytes()
    return Checkpoint(
        run_dir=str(run_dir.resolve()),
        file=str(file.resolve()),
        model=config["model"],
        num_classes=int(config["num_classes"]),
        input_scale=float(config.get("input_scale", 1.0)),
        data=str(config["data"]),
        sha256=hashlib.sha256(weights).hexdigest(),
        init=str(config.get("init", "paper")),
        weights=weights,
    )
