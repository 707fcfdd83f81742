"""Visualisations of a trained run, end to end: load the run, compute, write PNGs.

Each function writes into ``<run>/visualize/`` (or ``out``) on the run's own filesystem (a
pyarrow URI keeps its scheme) and returns the written file's URI; ``convplat visualize`` only
parses arguments and prints it. ``run`` may also be ``torchvision:alexnet``: torchvision's
ImageNet weights from the torch cache (:mod:`convplat.training.models.pretrained`), with its
per-channel ImageNet mean in place of a mean image; its pictures go to
``./visualize-torchvision-alexnet/`` unless ``out`` says otherwise, and the top-9 search
needs ``data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from convplat.errors import ConfigError, ConvplatError
from convplat.storage import Location, resolve
from convplat.training.models.pretrained import IMAGENET_MEAN, TORCHVISION_ALEXNET
from convplat.visualize.occlusion import occlusion
from convplat.visualize.plots import filters_png, occlusion_png

OUT_DIR = "visualize"
TORCHVISION_OUT = "visualize-torchvision-alexnet"  # torchvision:alexnet has no run directory
TORCHVISION_FRAME = 256  # torchvision's eval preset: shorter side 256, centre crop 224


def out_location(run: str, out: str | None) -> Location:
    """Where a run's pictures go: ``out``, else ``<run>/visualize`` (for
    ``torchvision:alexnet``: ``./visualize-torchvision-alexnet``)."""
    if out is not None:
        return resolve(out)
    if run == TORCHVISION_ALEXNET:
        return resolve(TORCHVISION_OUT)
    return resolve(run).child(OUT_DIR)


def _write(run: str, out: str | None, name: str, data: bytes) -> str:
    """Write ``name`` into :func:`out_location`; returns the file's URI."""
    location = out_location(run, out)
    write_output(location, name, data)
    return location.child(name).uri


def write_output(location: Location, name: str, data: bytes) -> None:
    """``location.write_bytes``; an --out that cannot be written -> one OutputError line."""
    from convplat.pipeline.outdir import write_error

    try:
        location.write_bytes(name, data)
    except OSError as exc:  # --out is a file, read-only, the name too long ...
        raise write_error(location.child(name).uri, exc) from None


def load_model(run: str, weights: str = "final") -> tuple[nn.Module, dict]:
    """A run's model in eval mode and its config (``load_run_model``), or for
    ``torchvision:alexnet`` torchvision's ImageNet AlexNet (normalisation folded into conv1)
    with a config that names its per-channel mean (``mean_rgb``) and no shards (``data``)."""
    from convplat.training.checkpoints import load_run_model

    if run != TORCHVISION_ALEXNET:
        return load_run_model(run, weights=weights)
    if weights != "final":
        raise ConfigError(f"--weights {weights}: torchvision:alexnet has one set of weights")
    from convplat.transfer.checkpoint import torchvision_checkpoint

    checkpoint = torchvision_checkpoint()
    config = {
        "model": checkpoint.model,
        "num_classes": checkpoint.num_classes,
        "input_scale": checkpoint.input_scale,
        "data": None,
        "mean_rgb": [255 * m for m in IMAGENET_MEAN],
    }
    return checkpoint.build(), config


def mean_stats(config: dict) -> dict[str, np.ndarray]:
    """The statistics a run's inputs are normalised with: its shards' ``stats.npz``, or for
    weights that came with a per-channel mean (``config["mean_rgb"]``, torchvision's) that
    mean over torchvision's 256 frame; lighting is never applied here."""
    from convplat.pipeline.shardset import load_stats

    mean_rgb = config.get("mean_rgb")
    if mean_rgb is None:
        return load_stats(config["data"])
    frame = (TORCHVISION_FRAME, TORCHVISION_FRAME, 3)
    return {
        "mean": np.broadcast_to(np.asarray(mean_rgb, np.float32), frame).copy(),
        "eigval": np.zeros(3, np.float32),
        "eigvec": np.eye(3, dtype=np.float32),
    }


def image_file(name: str) -> Path:
    """``name`` as a Path when it is a file; else one ConvplatError saying what it is."""
    path = Path(name)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "no such file"
        raise ConvplatError(f"expected an image file, got {name!r} ({what})")
    return path


def preprocess(
    image_bytes: bytes, config: dict, size: int, name: str = "the image"
) -> torch.Tensor:
    """A raw image file as the run saw validation images: shorter side to the stats' frame
    (256), centre crop, centre ``size`` crop, mean subtraction, ``input_scale``; (3, size, size).
    Bytes that are not an image -> one ConvplatError line naming ``name``.
    """
    from convplat.errors import ImageDecodeError
    from convplat.pipeline.image import process_image
    from convplat.training.augment import BatchTransform, center_window, windows_tensor

    stats = mean_stats(config)
    frame = int(stats["mean"].shape[0])
    try:
        pixels = process_image(image_bytes, frame).pixels  # (frame, frame, 3) uint8
    except ImageDecodeError as exc:
        raise ConvplatError(f"{name}: {exc.reason}; expected an image file") from None
    top, left, flip = center_window(pixels.shape[0], pixels.shape[1], size)
    crop = torch.from_numpy(pixels[top : top + size, left : left + size].copy())[None]
    transform = BatchTransform.from_stats(
        stats, lighting_std=0.0, input_scale=config.get("input_scale", 1.0)
    ).eval()
    return transform(crop, windows_tensor([(top, left, flip)]), lighting=False)[0]


def run_filters(run: str, out: str | None = None, weights: str = "final") -> str:
    """``convplat visualize filters RUN``: first-layer filters -> ``filters.png``."""
    model, _ = load_model(run, weights=weights)
    return _write(run, out, "filters.png", filters_png(model))


def run_occlusion(
    run: str,
    image_path: str,
    size: int = 32,
    stride: int = 8,
    label: int | None = None,
    out: str | None = None,
    weights: str = "final",
    batch_size: int = 64,
) -> str:
    """``convplat visualize occlusion RUN IMAGE``: Fig. 7 maps -> ``occlusion-<image>.png``."""
    path = image_file(image_path)
    if stride < 1:
        raise ConfigError(f"--stride: expected >= 1, got {stride}")
    model, config = load_model(run, weights=weights)
    image = preprocess(path.read_bytes(), config, model.input_size, name=image_path)
    if label is not None and not 0 <= label < model.num_classes:
        raise ConvplatError(f"expected --label in 0..{model.num_classes - 1}, got {label}")
    if not 1 <= size <= model.input_size:
        raise ConfigError(f"--size: expected 1..{model.input_size} (the input size), got {size}")
    maps = occlusion(model, image, label, size=size, stride=stride, batch_size=batch_size)
    return _write(run, out, f"occlusion-{path.stem}.png", occlusion_png(image, maps))


def shards_of(run: str, config: dict, data: str | None) -> str:
    """``data``, else the run's shards (torchvision:alexnet has none: ``--data`` is needed)."""
    shards = data or config.get("data")
    if not shards:
        raise ConfigError(
            f"{run} has no validation shards of its own; pass --data SHARDS (a directory "
            "written by `convplat prepare`)"
        )
    return shards


def val_batches(run_config: dict, size: int, batch_size: int, data: str | None = None):
    """Validation images of a run's shards as (B, 3, size, size) model inputs, centre crops."""
    from convplat.visualize.search import val_batches as shard_batches

    shards = data or run_config["data"]
    yield from shard_batches(
        shards,
        size,
        batch_size,
        run_config.get("input_scale", 1.0),
        mean_rgb=run_config.get("mean_rgb"),
    )


def run_deconv(
    run: str,
    layer: int,
    maps: list[int] | None = None,
    data: str | None = None,
    out: str | None = None,
    weights: str = "final",
    batch_size: int = 32,
    count: int = 8,
    seed: int = 0,
    executor: str = "auto",
    ray_min_images: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> str:
    """``convplat visualize deconv RUN --layer L [--maps …] [--data …]``: the top-9
    activations of each feature map over the validation shards, projected (Fig. 2 style)
    -> ``deconv-layer<L>.png``. Without ``maps``, ``count`` random maps (ZFNet: "a random
    subset of feature maps"). ``executor`` auto/local/ray: Ray tasks, one per shard group,
    search large validation splits (auto: from ``ray_min_images`` images)."""
    from convplat.cluster import RAY_MIN_IMAGES
    from convplat.progress import progress_bar
    from convplat.visualize.deconv import conv_layers
    from convplat.visualize.plots import deconv_figure, png_bytes
    from convplat.visualize.search import check_executor, search_shards

    check_executor(executor)  # before the (slow) model load
    if run == TORCHVISION_ALEXNET:
        shards_of(run, {}, data)  # before the model load, too
    model, config = load_model(run, weights=weights)
    shards = shards_of(run, config, data)
    convs = conv_layers(model)
    if not 1 <= layer <= len(convs):
        raise ConvplatError(f"expected --layer in 1..{len(convs)}, got {layer}")
    width = model.features[convs[layer - 1]].out_channels
    if maps is None:
        generator = torch.Generator().manual_seed(seed)
        maps = sorted(torch.randperm(width, generator=generator)[:count].tolist())
    bad = [m for m in maps if not 0 <= m < width]
    if bad:
        raise ConvplatError(f"expected --maps in 0..{width - 1} for layer {layer}, got {bad}")
    with progress_bar(progress) as bar:
        tops, _ = search_shards(
            model,
            layer,
            maps,
            shards,
            input_scale=config.get("input_scale", 1.0),
            mean_rgb=config.get("mean_rgb"),
            k=9,
            batch_size=batch_size,
            executor=executor,
            ray_min_images=RAY_MIN_IMAGES if ray_min_images is None else ray_min_images,
            address=address,
            progress=bar,
        )
    if not all(tops.values()):
        raise ConvplatError("no validation images found in the shards")
    figure = deconv_figure(model, tops, layer)
    return _write(run, out, f"deconv-layer{layer}.png", png_bytes(figure, scale=2))


def epoch_checkpoints(run: str) -> list[tuple[int, str]]:
    """(epoch, weights file name relative to the run) for every saved ``epoch-NNN`` checkpoint."""
    from pyarrow import fs as pafs

    from convplat.training.checkpoints import CHECKPOINTS, FINAL_WEIGHTS

    location = resolve(run)
    selector = pafs.FileSelector(location.join(CHECKPOINTS), allow_not_found=True)
    found = []
    for info in location.fs.get_file_info(selector):
        name = info.base_name
        if info.type == pafs.FileType.Directory and name.startswith("epoch-"):
            weights = f"{CHECKPOINTS}/{name}/{FINAL_WEIGHTS}"
            if name[6:].isdigit() and location.exists(weights):
                found.append((int(name[6:]), weights))
    return sorted(found)


def run_evolution(
    run: str,
    layer: int,
    maps: list[int],
    data: str | None = None,
    out: str | None = None,
    epochs: list[int] | None = None,
    batch_size: int = 32,
) -> str:
    """``convplat visualize evolution RUN --layer L --maps …``: the strongest activation's
    projection per feature map at each saved epoch (Fig. 4 style) -> ``evolution-layer<L>.png``
    (columns = epochs in order, rows = maps)."""
    from convplat.training.checkpoints import load_weights, read_run_config
    from convplat.training.models import create_model
    from convplat.visualize.plots import evolution_figure, png_bytes

    if run == TORCHVISION_ALEXNET:
        raise ConfigError(
            "evolution needs a run with epoch checkpoints; torchvision:alexnet is one set of "
            "weights (use filters, deconv, occlusion or correspondence)"
        )
    config = read_run_config(run)
    checkpoints = epoch_checkpoints(run)
    if epochs is not None:
        checkpoints = [(e, w) for e, w in checkpoints if e in set(epochs)]
    if not checkpoints:
        raise ConvplatError(f"{run} has no epoch checkpoints{' for those epochs' * bool(epochs)}")
    location = resolve(run)
    models = []
    for _, weights in checkpoints:
        model = create_model(config["model"], num_classes=config["num_classes"])
        models.append(
            load_weights(model, location.read_bytes(weights), location.child(weights).uri).eval()
        )
    size = models[0].input_size
    figure = evolution_figure(
        models, lambda: val_batches(config, size, batch_size, data), layer, maps
    )
    return _write(run, out, f"evolution-layer{layer}.png", png_bytes(figure, scale=2))
