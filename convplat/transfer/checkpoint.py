"""An ImageNet run's weights for transfer and feature export: the newest run, a run directory
or a ``.safetensors`` file inside one, with the configuration the weights were trained with."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convplat.errors import ConvplatError, DatasetError
from convplat.training.checkpoints import (
    BEST_WEIGHTS,
    FINAL_WEIGHTS,
    latest_checkpoint,
    load_weights,
    read_run_config,
    state_dict_bytes,
)
from convplat.training.models import ConvNet
from convplat.training.models.pretrained import (
    IMAGENET_MEAN,
    TORCHVISION_ALEXNET,
    TORCHVISION_MODEL,
    build_network,
    fold_normalisation,
    load_torchvision_alexnet,
    torchvision_cache_file,
)


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
            return build_network(self.model, self.num_classes).input_size

    def mean_and_quality(self) -> tuple[np.ndarray, int]:
        """The mean image the weights were trained with (subtracted before ``input_scale``)
        and the JPEG quality to re-encode transfer images with (the shards')."""
        from convplat.pipeline.shardset import load_stats, read_manifest
        from convplat.transfer.extract import DEFAULT_QUALITY

        if self.model == TORCHVISION_MODEL:  # torchvision's per-channel mean on 0..255
            mean = np.asarray(IMAGENET_MEAN, np.float32) * 255
            return np.broadcast_to(mean, (256, 256, 3)).copy(), DEFAULT_QUALITY
        try:
            stats = load_stats(self.data)
        except DatasetError as exc:
            raise DatasetError(
                f"{exc} (the mean image of {self.run_dir}'s training data is needed to "
                "preprocess the images exactly as in training)"
            ) from None
        try:
            quality = int(read_manifest(self.data).get("quality", DEFAULT_QUALITY))
        except DatasetError:
            quality = DEFAULT_QUALITY
        return np.asarray(stats["mean"], np.float32), quality


def build_model(name: str, num_classes: int, weights: bytes, partial: bool = False) -> ConvNet:
    """``name`` with ``weights``, built on the meta device and given the loaded tensors: a
    random initialisation that the weights replace anyway cost ~1 s of every worker's first
    task for AlexNet's 61M parameters. ``partial`` weights (the layers up to a feature cut)
    leave the other layers on the meta device, unusable until loaded."""
    with torch.device("meta"):
        model = build_network(name, num_classes)
    load_weights(model, weights, f"{name} weights", assign=True, strict=not partial)
    if partial:
        return model.eval()
    left = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a buffer outside the state dict would have no values
        raise ConvplatError(f"{name} weights: no values for {', '.join(left)}")
    return model.eval()


def torchvision_checkpoint() -> Checkpoint:
    """``torchvision:alexnet``: torchvision's ImageNet weights from the torch cache, with its
    normalisation folded into conv1 (:func:`fold_normalisation`)."""
    path = torchvision_cache_file()
    model = fold_normalisation(load_torchvision_alexnet())
    weights = state_dict_bytes(model)
    return Checkpoint(
        run_dir=os.path.dirname(path),
        file=path,
        model=TORCHVISION_MODEL,
        num_classes=1000,
        input_scale=1 / 255,
        data="",
        sha256=hashlib.sha256(weights).hexdigest(),
        weights=weights,
        init="kaiming",  # torchvision's own initialisation family, for the scratch baseline
    )


def _run_dir_of(file: Path) -> Path:
    """The run directory above a weights file (the nearest parent with config.json)."""
    for parent in list(file.parents)[:4]:
        if (parent / "config.json").is_file():
            return parent
    raise ConvplatError(
        f"--checkpoint: no config.json above {file}: expected a .safetensors file inside a run "
        "directory made by `convplat train`"
    )


def load_checkpoint(
    checkpoint: str | None = None, runs: str = "runs", option: str = "--checkpoint"
) -> Checkpoint:
    """The newest run under ``runs`` (or ``checkpoint``: a run directory or a ``.safetensors``
    file inside one), with its weight bytes and their sha256.

    ``torchvision:alexnet`` is torchvision's ImageNet AlexNet from the torch cache. A run
    directory contributes ``model.safetensors``, else ``best.safetensors``, else its latest
    epoch checkpoint.

    Raises:
        ConvplatError: nothing found, or not a convplat run.
    """
    from convplat.training.checkpoints import newest_run

    if checkpoint == TORCHVISION_ALEXNET:
        return torchvision_checkpoint()
    if checkpoint is None:
        run_dir = Path(newest_run(runs))
        file = run_dir / FINAL_WEIGHTS
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise ConvplatError(
                f"{option}: {checkpoint} does not exist: expected a run directory "
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
                        f"{option}: {checkpoint} has no {FINAL_WEIGHTS}, {BEST_WEIGHTS} or "
                        "epoch checkpoint; train it first or pass another run"
                    )
                file = Path(latest) / FINAL_WEIGHTS
        else:
            if path.suffix != ".safetensors":
                raise ConvplatError(
                    f"{option}: expected a run directory or a .safetensors file, got {path}"
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
