"""Frozen ImageNet features: load a checkpoint, freeze layers up to a cut, extract once, cache.

ZFNet §5.2 keeps layers 1-7 of the ImageNet model fixed and trains a new softmax on top. The
images are prepared exactly as the ImageNet shards were (shorter side -> S, centre S x S crop,
JPEG at the shards' quality; AlexNet §2) and fed as the model's centre ``input_size`` crop,
mean-image subtracted over that window by the training code's own ``BatchTransform``.

Features are computed once per image (and view: centre crop, plus its mirror with
``flip``) and cached in ``<runs>/.cache/features-<key>.npz``; the key hashes the checkpoint's
weight bytes, the cut, the augmentation, the mean image and the dataset listing (relative paths,
file sizes, labels), so a changed checkpoint or dataset never reuses stale features. Large
datasets are extracted by Ray tasks (one model load per chunk of images), small ones in-process.

The extractor takes any layer by its paper name (``resolve_layer``: conv1..conv5, fc6, fc7, fc8 /
logits; conv maps flattened or globally pooled); `convplat features` (``convplat.features``)
runs the same ``extract_jpegs`` / ``extract_chunk`` / ``FeatureExtractor`` for any layer and
writes Parquet, so both commands give the same numbers for the same images.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from torch import nn

from convplat.errors import ConfigError, ConvplatError, ImageDecodeError
from convplat.pipeline.image import process_image
from convplat.pipeline.readers import DatasetListing
from convplat.storage import resolve
from convplat.training.augment import BatchTransform, center_window
from convplat.training.checkpoints import (
    BEST_WEIGHTS,
    FINAL_WEIGHTS,
    latest_checkpoint,
    load_weights,
    read_run_config,
)
from convplat.training.models import ConvNet, create_model

CACHE_VERSION = 1
DEFAULT_QUALITY = 90
CUTS = ("fc7", "fc6", "conv5")  # transfer's --cut choices (ZFNet Table 7: layers 5 and 7)
POOLS = ("flatten", "avg", "max")


# --- checkpoints ----------------------------------------------------------------------------


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


# --- freezing: any layer, by its paper name ---------------------------------------------------


def resolve_layer(model: ConvNet, name: str, last_conv_alias: bool = False) -> str:
    """The model's name for the layer ``name`` (``conv1``..``conv5``, ``fc6``, ``fc7``, ``fc8``;
    ``logits`` is the output layer). With ``last_conv_alias``, ``conv5`` is the last conv layer
    whatever its number (transfer's ``--cut conv5``: ZFNet's "layer 5"; OverFeat-accurate's
    conv6, whose maps OverFeat §3.3 calls layer 5).

    Raises:
        ConfigError: the model has no such layer (an ablation without it, or a typo).
    """
    key = name.strip().lower()
    names = model.layer_names
    convs = [n for n in names if n.startswith("conv")]
    if key == "logits":
        key = names[-1]
    elif key == "conv5" and last_conv_alias and convs:
        key = convs[-1]
    if key not in names:
        raise ConfigError(
            f"--layer: {model.__class__.__name__} has no layer {name!r}; "
            f"choose one of {', '.join(names)} or logits"
        )
    return key


def _reduce(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, C, h, w) maps -> (B, C·h·w) flattened, or (B, C) by global average / max pooling;
    fc outputs (B, n) or OverFeat's (B, n, 1, 1) -> (B, n)."""
    if x.dim() == 4 and pool == "avg":
        return x.mean(dim=(2, 3))
    if x.dim() == 4 and pool == "max":
        return x.amax(dim=(2, 3))
    return torch.flatten(x, 1)


def _conv_shapes(model: ConvNet) -> list[tuple[int, ...]]:
    """(C, h, w) after every module of ``features`` at ``input_size``, by shape propagation on
    the meta device (no compute, no copy of the weights)."""
    from torch.func import functional_call

    x = torch.empty(1, 3, model.input_size, model.input_size, device="meta")
    shapes = []
    for module in model.features:
        tensors = {n: torch.empty_like(t, device="meta") for n, t in module.state_dict().items()}
        x = functional_call(module, tensors, (x,))
        shapes.append(tuple(x.shape[1:]))
    return shapes


def layer_dims(
    model: ConvNet, cuts: Sequence[str], pool: str = "flatten", last_conv_alias: bool = True
) -> dict[str, int]:
    """Width of the features at each cut: conv layers C·h·w flattened (conv5 of AlexNet/ZFNet:
    256·6·6 = 9216) or C when pooled; fc layers their units."""
    if pool not in POOLS:
        raise ConfigError(f"--pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    ends = model.layer_ends()
    layers = model.named_layers()
    shapes = None
    dims = {}
    for cut in cuts:
        name = resolve_layer(model, cut, last_conv_alias)
        stage, end = ends[name]
        if stage == "classifier":
            layer = layers[name]
            dims[cut] = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
            continue
        shapes = shapes or _conv_shapes(model)
        c, h, w = shapes[end - 1]
        dims[cut] = c if pool in ("avg", "max") else c * h * w
    return dims


def feature_dim(model: ConvNet, cut: str) -> int:
    """Width of the transfer features at ``cut`` (conv5: the pooled maps flattened, 9216 for
    AlexNet/ZFNet; fc6 its units; fc7 ``model.num_features``)."""
    return layer_dims(model, (cut,))[cut]


class FeatureExtractor(nn.Module):
    """The layers of ``model`` up to one or more cuts, frozen (ZFNet §5.2: layers 1-7 fixed).

    It shares its modules with ``model`` and turns off their gradients (``requires_grad``), and
    it stays in eval mode whatever ``.train()`` is called with, so dropout never acts.

    Cuts are layer names (``resolve_layer``): a layer's output is everything up to the next
    weight layer, as in ZFNet Fig. 3 - ``conv1``..``conv5`` after their ReLU, pool and
    normalisation (``conv5``: the last conv layer's pooled maps, 256 x 6 x 6 for AlexNet/ZFNet),
    ``fc6``/``fc7`` after ReLU, ``fc8``/``logits`` before the softmax. Conv maps are flattened
    (``pool="flatten"``) or globally average/max pooled to one value per map. Transfer's cuts
    are ``fc7`` (default), ``fc6`` and ``conv5``; ``convplat features`` takes any layer.
    """

    def __init__(
        self,
        model: ConvNet,
        cuts: Sequence[str] = ("fc7",),
        pool: str = "flatten",
        last_conv_alias: bool = True,
    ) -> None:
        super().__init__()
        cuts = tuple(cuts)
        if not cuts or len(set(cuts)) != len(cuts):
            raise ConfigError(f"expected one or more distinct layers, got {cuts}")
        self.cuts = cuts
        self.pool = pool
        self.dims = layer_dims(model, cuts, pool, last_conv_alias)  # validates names and pool
        ends = model.layer_ends()
        self.at: dict[tuple[str, int], list[str]] = {}
        for cut in cuts:
            self.at.setdefault(ends[resolve_layer(model, cut, last_conv_alias)], []).append(cut)
        last = {
            stage: max((e for s, e in self.at if s == stage), default=0)
            for stage in ("features", "classifier")
        }
        self.uses_classifier = last["classifier"] > 0
        stop = len(model.features) if self.uses_classifier else last["features"]
        self.features = model.features[:stop]  # shares the modules
        self.hidden = model.classifier[: last["classifier"]]
        self.complete = stop == len(model.features)
        self.conv_classifier = model.conv_classifier
        self.feature_size = model.feature_size
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    def forward_all(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, 3, S, S)`` model input -> ``{cut: (B, dim)}``."""
        out: dict[str, torch.Tensor] = {}
        x = images
        for i, layer in enumerate(self.features):
            x = layer(x)
            for cut in self.at.get(("features", i + 1), ()):
                out[cut] = _reduce(x, self.pool)
        if self.complete:
            s = self.feature_size
            if tuple(x.shape[-2:]) != (s, s):
                raise ValueError(f"expected {s}x{s} pooled maps, got {tuple(x.shape[-2:])}")
        if self.uses_classifier:
            if not self.conv_classifier:
                x = torch.flatten(x, 1)  # (B, C·s·s)
            for i, layer in enumerate(self.hidden):
                x = layer(x)
                for cut in self.at.get(("classifier", i + 1), ()):
                    out[cut] = torch.flatten(x, 1)  # conv form: (B, n, 1, 1) -> (B, n)
        return {cut: out[cut] for cut in self.cuts}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features at the first cut, ``(B, dim)``."""
        return self.forward_all(images)[self.cuts[0]]


def freeze(model: ConvNet, cut: str = "fc7") -> FeatureExtractor:
    """Layers 1..``cut`` of ``model`` as a frozen feature extractor (modifies ``model``'s
    ``requires_grad`` flags in place, as a torchvision fine-tuning script would)."""
    return FeatureExtractor(model, (cut,))


class TransferNet(nn.Module):
    """A frozen backbone up to ``cut`` and a new trainable softmax layer: the model that the
    cached-feature head training is equivalent to (only ``head`` has trainable parameters)."""

    def __init__(
        self, model: ConvNet, cut: str, num_classes: int, head: nn.Linear | None = None
    ) -> None:
        super().__init__()
        self.backbone = freeze(model, cut)
        dim = self.backbone.dims[cut]
        self.head = head if head is not None else nn.Linear(dim, num_classes)
        self.head.requires_grad_(True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


# --- images -----------------------------------------------------------------------------------


def decode_files(
    paths: Sequence[str], size: int = 256, quality: int = DEFAULT_QUALITY
) -> tuple[list[bytes | None], list[str | None]]:
    """Each file as the shards hold an image: shorter side ``size``, centre crop, JPEG.

    Returns per path the JPEG bytes (None when unusable) and the reason it was rejected (None
    when usable). Grayscale, CMYK and mislabelled formats are converted; nothing raises.
    """
    jpegs: list[bytes | None] = []
    reasons: list[str | None] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
            jpegs.append(process_image(data, size=size, quality=quality).jpeg)
            reasons.append(None)
        except ImageDecodeError as exc:
            jpegs.append(None)
            reasons.append(exc.reason)
        except OSError as exc:
            jpegs.append(None)
            reasons.append(f"unreadable file: {exc.strerror or exc}")
    return jpegs, reasons


def decode_pixels(jpegs: Sequence[bytes]) -> np.ndarray:
    """``(B, S, S, 3)`` uint8 RGB, decoded as the training loader decodes shard images."""
    return np.stack([simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs])


def make_transform(mean: np.ndarray, input_scale: float) -> BatchTransform:
    """The training preprocessing without lighting: mean-image window subtraction, flip, scale."""
    zeros = np.zeros(3, np.float32)
    return BatchTransform(
        mean, zeros, np.eye(3, dtype=np.float32), lighting_std=0.0, input_scale=input_scale
    ).eval()


@torch.no_grad()
def extract_features(
    extractor: FeatureExtractor,
    transform: BatchTransform,
    jpegs: Sequence[bytes],
    *,
    crop: int,
    flip: bool = False,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Features ``{cut: (V, N, dim)}`` float32 of the centre ``crop`` (view 0) and, with
    ``flip``, its mirror image (view 1), batched under ``no_grad``."""
    views = 2 if flip else 1
    n = len(jpegs)
    out = {c: np.empty((views, n, d), np.float32) for c, d in extractor.dims.items()}
    if n == 0:
        return out
    device = torch.device(device)
    size = transform.size
    top, left, _ = center_window(size, size, crop)
    for start in range(0, n, batch_size):
        pixels = decode_pixels(jpegs[start : start + batch_size])  # (B, S, S, 3)
        b = len(pixels)
        crops = torch.from_numpy(pixels[:, top : top + crop, left : left + crop]).to(device)
        for v in range(views):
            windows = torch.tensor([[top, left, v]] * b, dtype=torch.int64)
            feats = extractor.forward_all(transform(crops, windows.to(device), lighting=False))
            for cut, f in feats.items():
                out[cut][v, start : start + b] = f.float().cpu().numpy()
        if on_batch is not None:
            on_batch(b)
    return out


def default_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def extract_chunk(
    paths: Sequence[str],
    *,
    model_name: str,
    num_classes: int,
    weights: bytes,
    mean: np.ndarray,
    input_scale: float,
    cuts: Sequence[str],
    flip: bool,
    size: int,
    quality: int,
    batch_size: int,
    keep_jpegs: bool,
    device: str | None = None,
    pool: str = "flatten",
    last_conv_alias: bool = True,
) -> dict:
    """Decode a chunk of files and extract their features with a model built once: the body
    of one Ray task (no Ray here). ``cuts=()`` only decodes.

    Returns ``{"reasons": [...], "jpegs": [...] or None, "features": {cut: (V, n_ok, dim)}}``,
    features and jpegs in path order over the decodable files only.
    """
    jpegs, reasons = decode_files(paths, size, quality)
    ok = [j for j in jpegs if j is not None]
    features: dict[str, np.ndarray] = {}
    if cuts:
        features = extract_jpegs(
            ok,
            model_name=model_name,
            num_classes=num_classes,
            weights=weights,
            mean=mean,
            input_scale=input_scale,
            cuts=cuts,
            flip=flip,
            batch_size=batch_size,
            device=device,
            pool=pool,
            last_conv_alias=last_conv_alias,
        )
    return {"reasons": reasons, "jpegs": ok if keep_jpegs else None, "features": features}


def extract_jpegs(
    jpegs: Sequence[bytes],
    *,
    model_name: str,
    num_classes: int,
    weights: bytes,
    mean: np.ndarray,
    input_scale: float,
    cuts: Sequence[str],
    flip: bool = False,
    batch_size: int = 32,
    device: str | None = None,
    pool: str = "flatten",
    last_conv_alias: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Features ``{cut: (V, N, dim)}`` of S x S JPEGs (as the shards hold them) with a model
    built once from ``weights``: the shared body of transfer's and ``convplat features``'s
    Ray tasks and in-process runs."""
    target = default_device(device)
    model = build_model(model_name, num_classes, weights)
    extractor = FeatureExtractor(model, cuts, pool, last_conv_alias).to(target)
    transform = make_transform(mean, input_scale).to(target)
    return extract_features(
        extractor,
        transform,
        jpegs,
        crop=model.input_size,
        flip=flip,
        batch_size=batch_size,
        device=target,
        on_batch=on_batch,
    )


# --- the cache --------------------------------------------------------------------------------


def dataset_fingerprint(listing: DatasetListing) -> str:
    """sha256 of the classes and every item's relative path, file size and label."""
    h = hashlib.sha256()
    h.update(json.dumps([c.wnid for c in listing.classes]).encode())
    for item in listing.items:
        try:
            size = os.stat(item.path).st_size
        except OSError:
            size = -1
        rel = os.path.relpath(item.path, listing.root)
        h.update(f"{rel}\t{size}\t{item.label}\n".encode())
    return h.hexdigest()


def feature_key(**parts) -> str:
    """sha256 over the JSON of everything the features depend on."""
    return hashlib.sha256(
        json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True).encode()
    ).hexdigest()


def cache_name(key: str) -> str:
    return f"features-{key[:24]}.npz"


def save_cache(
    cache_dir: str,
    key: str,
    cut: str,
    features: np.ndarray,
    kept: np.ndarray,
    rejected: list[tuple[int, str]],
) -> str:
    """Write one cut's features (atomically); returns the file's path or URI."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        key=np.array(key),
        cut=np.array(cut),
        features=features,
        kept=np.asarray(kept, np.int64),
        rejected_index=np.array([i for i, _ in rejected], np.int64),
        rejected_reason=np.array([r for _, r in rejected], dtype=np.str_),
    )
    location = resolve(cache_dir)
    location.write_bytes(cache_name(key), buffer.getvalue())
    return location.join(cache_name(key))


def load_cache(cache_dir: str, key: str) -> dict | None:
    """The cached arrays for ``key``, or None (missing, unreadable or another key)."""
    location = resolve(cache_dir)
    name = cache_name(key)
    if not location.exists(name):
        return None
    try:
        with np.load(io.BytesIO(location.read_bytes(name)), allow_pickle=False) as arrays:
            if str(arrays["key"]) != key:
                return None
            return {
                "features": arrays["features"],
                "kept": arrays["kept"],
                "rejected": list(
                    zip(
                        arrays["rejected_index"].tolist(),
                        arrays["rejected_reason"].tolist(),
                        strict=True,
                    )
                ),
            }
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache file is recomputed, never trusted


# --- the whole dataset ------------------------------------------------------------------------


@dataclass
class DatasetFeatures:
    """What the protocol needs from a dataset, per decodable image (``kept`` order)."""

    kept: np.ndarray  # indices into listing.items
    labels: np.ndarray  # (N,)
    features: dict[str, np.ndarray]  # cut -> (V, N, dim)
    jpegs: list[bytes] | None  # S x S JPEGs (modes scratch/full)
    rejected: list[tuple[str, str]]  # (path, reason)
    cache: dict[str, dict] = field(default_factory=dict)  # cut -> {"file", "reused"}
    executor: str = "none"
    seconds: float = 0.0


def gather(
    listing: DatasetListing,
    checkpoint: Checkpoint,
    mean: np.ndarray,
    *,
    cuts: Sequence[str] = ("fc7",),
    flip: bool = False,
    need_jpegs: bool = False,
    quality: int = DEFAULT_QUALITY,
    cache_dir: str | None = None,
    executor: str = "auto",
    ray_min_images: int = 2000,
    address: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    progress=None,
) -> DatasetFeatures:
    """Features of every image at every cut (from the cache when there), and the decoded JPEGs
    when ``need_jpegs``. Decoding and extraction run once, together, for whatever is missing.

    ``progress``: an optional rich Progress to report images on.
    """
    started = time.perf_counter()
    size = int(mean.shape[0])
    fingerprint = dataset_fingerprint(listing)
    mean_sha = hashlib.sha256(np.ascontiguousarray(mean, np.float32).tobytes()).hexdigest()
    keys = {
        cut: feature_key(
            weights=checkpoint.sha256,
            model=checkpoint.model,
            cut=cut,
            augment="flip" if flip else "none",
            dataset=fingerprint,
            mean=mean_sha,
            input_scale=checkpoint.input_scale,
            size=size,
            quality=quality,
        )
        for cut in cuts
    }
    features: dict[str, np.ndarray] = {}
    cache_info: dict[str, dict] = {}
    kept = None
    rejected_idx: list[tuple[int, str]] = []
    if cache_dir is not None:
        for cut, key in keys.items():
            hit = load_cache(cache_dir, key)
            if hit is not None:
                features[cut] = hit["features"]
                kept, rejected_idx = hit["kept"], hit["rejected"]
                cache_info[cut] = {"file": resolve(cache_dir).join(cache_name(key)), "reused": True}
    missing = [c for c in cuts if c not in features]
    jpegs = None
    used = "cache"
    if missing or need_jpegs or kept is None:
        paths = [item.path for item in listing.items]
        spec = dict(
            model_name=checkpoint.model,
            num_classes=checkpoint.num_classes,
            mean=mean,
            input_scale=checkpoint.input_scale,
            cuts=tuple(missing),
            flip=flip,
            size=size,
            quality=quality,
            batch_size=batch_size,
            keep_jpegs=need_jpegs,
            device=device,
        )
        use_ray = executor == "ray" or (
            executor == "auto" and (len(paths) > ray_min_images or address is not None)
        )
        if use_ray:
            what = f"decode + {'/'.join(missing)} (Ray)" if missing else "decode (Ray)"
            advance = _advancer(progress, what, len(paths))
            result = _run_ray(paths, spec, checkpoint.weights, address, advance)
            used = "ray"
        else:
            result = _run_local(paths, spec, checkpoint, progress)
            used = "local"
        reasons = result["reasons"]
        kept = np.array([i for i, r in enumerate(reasons) if r is None], np.int64)
        rejected_idx = [(i, r) for i, r in enumerate(reasons) if r is not None]
        jpegs = result["jpegs"]
        for cut in missing:
            features[cut] = result["features"][cut]
            info = {"file": None, "reused": False}
            if cache_dir is not None:
                info["file"] = save_cache(
                    cache_dir, keys[cut], cut, features[cut], kept, rejected_idx
                )
            cache_info[cut] = info
    assert kept is not None
    labels = np.array([listing.items[i].label for i in kept], np.int64)
    return DatasetFeatures(
        kept=np.asarray(kept, np.int64),
        labels=labels,
        features=features,
        jpegs=jpegs,
        rejected=[(listing.items[i].path, r) for i, r in rejected_idx],
        cache=cache_info,
        executor=used,
        seconds=time.perf_counter() - started,
    )


def _advancer(progress, description: str, total: int) -> Callable[[int], None]:
    if progress is None:
        return lambda n: None
    task = progress.add_task(description, total=total, rate="")
    return lambda n: progress.advance(task, n)


def _run_local(paths: list[str], spec: dict, checkpoint: Checkpoint, progress) -> dict:
    """Decode, then extract, in this process (on cuda when present), with progress bars."""
    jpegs: list[bytes | None] = []
    reasons: list[str | None] = []
    cuts = spec["cuts"]
    advance = _advancer(progress, "decode", len(paths))
    step = 64
    for start in range(0, len(paths), step):
        j, r = decode_files(paths[start : start + step], spec["size"], spec["quality"])
        jpegs += j
        reasons += r
        advance(len(j))
    ok = [j for j in jpegs if j is not None]
    if not cuts:
        return {"reasons": reasons, "jpegs": ok, "features": {}}
    advance = _advancer(progress, f"{'/'.join(cuts)} features", len(ok))
    features = extract_jpegs(
        ok,
        model_name=checkpoint.model,
        num_classes=checkpoint.num_classes,
        weights=checkpoint.weights,
        mean=spec["mean"],
        input_scale=spec["input_scale"],
        cuts=cuts,
        flip=spec["flip"],
        batch_size=spec["batch_size"],
        device=spec["device"],
        pool=spec.get("pool", "flatten"),
        last_conv_alias=spec.get("last_conv_alias", True),
        on_batch=advance,
    )
    return {"reasons": reasons, "jpegs": ok if spec["keep_jpegs"] else None, "features": features}


def _run_ray(paths: list[str], spec: dict, weights: bytes, address: str | None, advance) -> dict:
    """Fan ``extract_chunk`` out over Ray tasks (one GPU each when the cluster has GPUs)."""
    import ray

    from convplat.cluster import ensure_ray

    ensure_ray(address)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    if gpus:
        chunk = max(256, math.ceil(len(paths) / (4 * gpus)))
        options = {"num_cpus": 1, "num_gpus": 1}
    else:
        # About two chunks per CPU: a model load (~1 s) per few hundred images.
        chunk = max(64, math.ceil(len(paths) / (2 * cpus)))
        options = {"num_cpus": 1}
    task = ray.remote(extract_chunk).options(max_retries=2, **options)
    weights_ref = ray.put(weights)
    mean_ref = ray.put(spec["mean"])
    args = {k: v for k, v in spec.items() if k != "mean"}
    if not gpus:
        args["device"] = "cpu"
    starts = list(range(0, len(paths), chunk))
    pending = {
        task.remote(paths[s : s + chunk], weights=weights_ref, **{**args, "mean": mean_ref}): s
        for s in starts
    }
    results: dict[int, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            s = pending.pop(ref)
            results[s] = ray.get(ref)
            advance(len(results[s]["reasons"]))
    ordered = [results[s] for s in starts]
    reasons = [r for res in ordered for r in res["reasons"]]
    jpegs = [j for res in ordered for j in res["jpegs"]] if spec["keep_jpegs"] else None
    features = {
        cut: np.concatenate([res["features"][cut] for res in ordered], axis=1)
        for cut in spec["cuts"]
    }
    return {"reasons": reasons, "jpegs": jpegs, "features": features}
