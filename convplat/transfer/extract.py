"""Images prepared as the shards hold them, through a frozen extractor, batched under no_grad.

The images are prepared exactly as the ImageNet shards were (shorter side -> S, centre S x S
crop, JPEG at the shards' quality; AlexNet §2) and fed as the model's centre ``input_size``
crop, mean-image subtracted over that window by the training code's own ``BatchTransform``.
:func:`extract_jpegs` and :func:`extract_chunk` are the bodies of transfer's and `convplat
features`'s Ray tasks (no Ray here), so both commands give the same numbers for one image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import simplejpeg
import torch
from safetensors.torch import save as save_safetensors

from convplat.errors import ImageDecodeError
from convplat.pipeline.image import process_image
from convplat.training.augment import BatchTransform, center_window
from convplat.training.checkpoints import read_state
from convplat.training.models import ConvNet
from convplat.training.models.pretrained import build_network
from convplat.transfer.checkpoint import build_model
from convplat.transfer.extractor import FeatureExtractor

DEFAULT_QUALITY = 90


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


def needed_weights(
    weights: bytes,
    model_name: str,
    num_classes: int,
    cuts: Sequence[str],
    last_conv_alias: bool = True,
) -> bytes:
    """Only the tensors of the layers up to ``cuts`` (safetensors bytes): ``conv1`` of AlexNet
    needs 140 KB of its 244 MB, ``conv5`` 9.3 MB, ``fc7`` all but fc8. Every Ray worker
    process fetches and holds what is shipped, so the rest stays on the driver."""
    if not cuts:  # decoding only: no layer runs
        return save_safetensors({})
    with torch.device("meta"):
        model = build_network(model_name, num_classes)
    extractor = FeatureExtractor(model, cuts, "flatten", last_conv_alias)
    used = {id(t) for t in itertools.chain(extractor.parameters(), extractor.buffers())}
    named = itertools.chain(model.named_parameters(), model.named_buffers())
    keep = {name for name, t in named if id(t) in used}
    state = read_state(weights, f"{model_name} weights")
    if keep >= set(state):
        return weights
    return save_safetensors({k: v for k, v in state.items() if k in keep})


class StoredWeights:
    """Weights put in Ray's object store once for many tasks.

    A worker process fetches and builds them into a model on its first task and reuses that
    model for every later one (:func:`build_once`): building AlexNet from its 233 MB of
    weights took 0.7–1.2 s here, a sixth of a 500-image shard task's time. The reference sits
    in a list so that Ray hands tasks the reference, not the bytes. ``partial`` weights
    (:func:`needed_weights`) leave the layers past the cuts on the meta device.
    """

    def __init__(self, weights: bytes, partial: bool = False) -> None:
        import ray

        self.refs = [ray.put(weights)]
        self.partial = partial

    @classmethod
    def for_cuts(
        cls,
        weights: bytes,
        model_name: str,
        num_classes: int,
        cuts: Sequence[str],
        last_conv_alias: bool = True,
    ) -> StoredWeights:
        """Only the layers up to ``cuts`` (:func:`needed_weights`), stored once."""
        needed = needed_weights(weights, model_name, num_classes, cuts, last_conv_alias)
        return cls(needed, partial=True)

    @property
    def key(self) -> str:
        return self.refs[0].hex()


_BUILT: dict[tuple[str, str, int], ConvNet] = {}  # this process's last model from StoredWeights


def build_once(model_name: str, num_classes: int, weights: bytes | StoredWeights) -> ConvNet:
    """The model of ``weights``; built once per process for :class:`StoredWeights` (the
    extraction never changes it), every time for plain bytes."""
    if not isinstance(weights, StoredWeights):
        return build_model(model_name, num_classes, weights)
    key = (weights.key, model_name, num_classes)
    if key not in _BUILT:
        import ray

        _BUILT.clear()  # one model per process: a later run's weights replace it
        data = ray.get(weights.refs[0])
        _BUILT[key] = build_model(model_name, num_classes, data, partial=weights.partial)
    return _BUILT[key]


def default_device(device: str | None = None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def extract_chunk(
    paths: Sequence[str],
    *,
    model_name: str,
    num_classes: int,
    weights: bytes | StoredWeights,
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
    weights: bytes | StoredWeights,
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
    model = build_once(model_name, num_classes, weights)
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
