"""OverFeat dense multi-scale classification (Sermanet et al. 2014, §3.3-3.5).

The network runs convolutionally on the whole image: the unpooled last-conv maps are max-pooled
once per offset (Δx, Δy) ∈ {0..n-1}², the classifier (fc layers as convolutions) slides over
every pooled set, and the per-offset outputs are interleaved into one map whose neighbouring
locations are ``window_step`` input pixels apart. Each location is the score of one
``input_size`` window of the (scaled) image: location (Y, X) sees
``[X·step, X·step + input_size) x [Y·step, Y·step + input_size)``.

``n`` is the final pool's stride: 3 for the accurate model (the paper's {0, 1, 2}), 2 for the
fast model's 2x2/2 pool and AlexNet/ZFNet's 3x3/2 pools; offsets >= the stride would only
repeat offset 0 one pooled cell later. Fine stride thus gives one output per unpooled
location (step 12 px accurate, 16 px fast/AlexNet/ZFNet); coarse stride (n = 1) one per pooled
location (36 / 32 px).

Scores: softmax over classes at every location, the class-wise spatial max, then the mean over
scales and flips (the paper's §3.3 steps (i)-(ii), on probabilities so that scales whose logits
differ in magnitude weigh alike, as ten-crop averages softmax outputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convplat.config.localize import PAPER_SCALES, STRIDES
from convplat.errors import ConfigError
from convplat.training.models.base import ConvNet

# O §3.3 / Table 5: the six test scales of the accurate model as shorter image sides are
# PAPER_SCALES (convplat.config.localize, with STRIDES); here the same six scales as the
# exact input sizes (H, W) of the paper's Table 5.
PAPER_TABLE_SIZES: tuple[tuple[int, int], ...] = (
    (245, 245),
    (281, 317),
    (317, 389),
    (389, 461),
    (425, 497),
    (461, 569),
)

Scale = int | tuple[int, int]


def _pool_stride(pool: nn.MaxPool2d) -> int:
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    if sy != sx:
        raise ValueError(f"expected a square final pool stride, got {stride}")
    return int(sy)


def _check_stride(stride: str) -> None:
    if stride not in STRIDES:
        raise ConfigError(f"--stride: expected one of {', '.join(STRIDES)}, got {stride!r}")


def offset_count(model: ConvNet, stride: str) -> int:
    """Offsets per axis: 'coarse' -> 1; 'fine' -> the final pool's stride (3 for the accurate
    model = the paper's {0, 1, 2}; 2 for the fast model's 2x2/2 pool and AlexNet/ZFNet's 3x3/2)."""
    _check_stride(stride)
    return 1 if stride == "coarse" else _pool_stride(model.final_pool)


def unpooled_stride(model: ConvNet) -> int:
    """Input pixels between neighbouring unpooled last-conv locations (accurate 12, others 16):
    the product of every conv and pool stride before the final pool."""
    total = 1
    for layer in list(model.features)[:-1]:
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            stride = layer.stride if layer.stride is not None else layer.kernel_size
            total *= stride if isinstance(stride, int) else stride[0]
    return total


def window_step(model: ConvNet, stride: str) -> int:
    """Pixels between neighbouring interleaved output locations (accurate: 36 coarse, 12 fine)."""
    n = offset_count(model, stride)
    return unpooled_stride(model) * _pool_stride(model.final_pool) // n


def offset_pool(model: ConvNet, unpooled: Tensor, stride: str = "fine") -> Tensor:
    """(B, C, H, W) unpooled last-conv maps -> (n*n, B, C, h, w): final_pool applied to
    unpooled[..., dy:, dx:] for (dy, dx) in row-major order over range(n) x range(n), every
    offset cropped to the same (h, w) (the smallest).

    The pool runs in floor mode whatever the model's ``ceil_mode`` (ZFNet), so every pooled
    cell is a whole pooling window and every output location a whole ``input_size`` window;
    at ``input_size`` floor and ceil give the same maps.
    """
    n = offset_count(model, stride)
    pool = model.final_pool
    pooled = [
        F.max_pool2d(
            unpooled[..., dy:, dx:],
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.dilation,
            ceil_mode=False,
        )
        for dy in range(n)
        for dx in range(n)
    ]
    h = min(p.shape[-2] for p in pooled)
    w = min(p.shape[-1] for p in pooled)
    return torch.stack([p[..., :h, :w] for p in pooled])  # (n*n, B, C, h, w)


def interleave(maps: Tensor) -> Tensor:
    """(n*n, B, K, h, w) per-offset outputs -> (B, K, h*n, w*n),
    out[..., y*n + dy, x*n + dx] = maps[dy*n + dx, ..., y, x]."""
    nn_, b, k, h, w = maps.shape
    n = round(nn_**0.5)
    if n * n != nn_:
        raise ValueError(f"expected a square number of offsets, got {nn_}")
    grid = maps.view(n, n, b, k, h, w)  # (dy, dx, B, K, y, x)
    return grid.permute(2, 3, 4, 0, 5, 1).reshape(b, k, h * n, w * n)  # (B, K, y, dy, x, dx)


def window_boxes(model: ConvNet, height: int, width: int, stride: str) -> Tensor:
    """(height*width, 4) float boxes (x0, y0, x1, y1) in the (scaled) input image's pixels of
    the window each interleaved output location sees, row-major: location (Y, X) covers
    [X*step, X*step + input_size) x [Y*step, Y*step + input_size)."""
    step = window_step(model, stride)
    ys = torch.arange(height, dtype=torch.float32) * step
    xs = torch.arange(width, dtype=torch.float32) * step
    y0, x0 = torch.meshgrid(ys, xs, indexing="ij")  # (height, width) each
    x0, y0 = x0.reshape(-1), y0.reshape(-1)
    size = float(model.input_size)
    return torch.stack([x0, y0, x0 + size, y0 + size], dim=1)


def dense_map(model: ConvNet, images: Tensor, stride: str = "fine") -> Tensor:
    """(B, 3, H, W) normalised images -> (B, num_classes, h', w') interleaved class logits.

    Location (Y, X) is the logits of the window ``window_boxes`` gives for it. Raises
    ConfigError when the image is too small to hold one window at every offset.
    """
    pooled = offset_pool(model, model.forward_features(images, pool=False), stride)
    offsets, b, c, h, w = pooled.shape
    s = model.feature_size
    if h < s or w < s:
        raise ConfigError(
            f"a {images.shape[-2]}x{images.shape[-1]} image is too small for {stride} dense "
            f"evaluation of a {model.input_size}x{model.input_size} network (each offset's "
            f"pooled map is {h}x{w}, the classifier needs {s}x{s}); use larger scales"
        )
    logits = model.classifier_as_conv()(pooled.reshape(offsets * b, c, h, w))
    return interleave(logits.view(offsets, b, *logits.shape[1:]))  # (B, K, h'·n, w'·n)


def _pair(value) -> int:
    return int(value if isinstance(value, int) else value[0])


def _axis_crop(model: ConvNet, size: int, index: int, stride: str) -> tuple[int, int, int]:
    """One axis of :func:`window_crop`: (start, end) in input pixels and the window's first
    unpooled cell inside the crop's own map."""
    n = offset_count(model, stride)
    pool = model.final_pool
    pk, ps = _pair(pool.kernel_size), _pool_stride(pool)
    first = (index // n) * ps + index % n  # unpooled cell where this location's pooling starts
    start, end = first, first + (model.feature_size - 1) * ps + pk  # cells it pools over
    for layer in reversed(list(model.features)[:-1]):  # receptive field, back to the input
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            k, s, p = _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.padding)
            start, end = start * s - p, (end - 1) * s - p + k
    total = unpooled_stride(model)
    crop_start = max(0, start // total * total)  # on the stride grid: same cells as the image
    return crop_start, min(size, end), first - crop_start // total


def window_crop(
    model: ConvNet, height: int, width: int, y: int, x: int, stride: str
) -> tuple[slice, slice, int, int]:
    """The input crop from which the plain network reproduces dense location (y, x) exactly.

    The window plus the context its padded layers read (their receptive field, clipped to the
    image), started on the unpooled stride grid so the crop's cells are the image's cells.
    Returns (rows, cols, uy, ux): the crop and the window's first unpooled cell in it.
    """
    y0, y1, uy = _axis_crop(model, height, y, stride)
    x0, x1, ux = _axis_crop(model, width, x, stride)
    return slice(y0, y1), slice(x0, x1), uy, ux


def window_logits(model: ConvNet, images: Tensor, y: int, x: int, stride: str = "fine") -> Tensor:
    """(B, 3, H, W) -> (B, num_classes) logits of dense location (y, x), computed the slow way:
    the whole network on that window's own crop (:func:`window_crop`), then the final pool and
    the ordinary classifier on its ``feature_size`` pooled cells. The reference for
    :func:`dense_map` (tests, benchmarks/dense.py)."""
    rows, cols, uy, ux = window_crop(model, images.shape[-2], images.shape[-1], y, x, stride)
    unpooled = model.forward_features(images[..., rows, cols], pool=False)
    pool = model.final_pool
    span = (model.feature_size - 1) * _pool_stride(pool) + _pair(pool.kernel_size)
    region = unpooled[..., uy : uy + span, ux : ux + span]
    pooled = F.max_pool2d(region, pool.kernel_size, pool.stride, pool.padding, pool.dilation)
    return model.forward_head(pooled)


def parse_scales(text: str | Sequence[Scale]) -> list[Scale]:
    """``"245,281,317"`` (shorter sides) or ``"245x245,281x317"`` (exact H x W) -> scales;
    ``"paper"`` gives :data:`PAPER_SCALES`, ``"paper-table"`` :data:`PAPER_TABLE_SIZES`."""
    if not isinstance(text, str):
        items = list(text)
    elif text.strip() == "paper":
        items = list(PAPER_SCALES)
    elif text.strip() == "paper-table":
        items = list(PAPER_TABLE_SIZES)
    else:
        items = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                dims = [int(v) for v in part.lower().split("x")]
            except ValueError:
                dims = []
            if len(dims) not in (1, 2):
                raise ConfigError(
                    f"--scales: expected sizes like 245 or 281x317, comma-separated, got {part!r}"
                )
            items.append(dims[0] if len(dims) == 1 else (dims[0], dims[1]))
    scales: list[Scale] = [s if isinstance(s, int) else (int(s[0]), int(s[1])) for s in items]
    if not scales or any(v < 1 for s in scales for v in (s if isinstance(s, tuple) else (s,))):
        raise ConfigError(f"--scales: expected positive sizes, got {text!r}")
    return scales


def scaled_size(height: int, width: int, scale: Scale) -> tuple[int, int]:
    """(H, W) of an image rescaled to ``scale``: an int is the shorter side (aspect kept, as
    the paper rescales whole images), an (H, W) pair is taken as it is."""
    if isinstance(scale, tuple):
        return int(scale[0]), int(scale[1])
    short = min(height, width)
    return max(1, round(height * scale / short)), max(1, round(width * scale / short))


def rescale(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(C, H, W) float image -> (C, *size), antialiased bilinear (as `prepare` resizes)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(
        image.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False
    )[0]


@torch.no_grad()
def dense_scores(
    model: ConvNet,
    image: Tensor,
    scales: Sequence[Scale] = PAPER_SCALES,
    stride: str = "fine",
    flip: bool = True,
) -> Tensor:
    """Class scores (num_classes,) of one normalised (3, H, W) image, O §3.3.

    At each scale (and its mirror image when ``flip``): dense class logits, softmax over
    classes per location, class-wise spatial max; then the mean over scales and flips.
    The image is mean-subtracted and scaled already; rescaling commutes with subtracting a
    per-channel mean, so the order does not matter.
    """
    if image.ndim != 3:
        raise ValueError(f"expected one (3, H, W) image, got shape {tuple(image.shape)}")
    if not scales:
        raise ConfigError("--scales: expected at least one scale")
    per_view = []
    for scale in scales:
        scaled = rescale(image, scaled_size(image.shape[-2], image.shape[-1], scale))
        batch = torch.stack([scaled, scaled.flip(-1)]) if flip else scaled.unsqueeze(0)
        probs = dense_map(model, batch, stride).float().softmax(dim=1)  # (V, K, h, w)
        per_view.append(probs.amax(dim=(-2, -1)))  # (V, K)
    return torch.cat(per_view).mean(dim=0)  # (K,)
