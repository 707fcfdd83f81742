"""PNG figures: first-layer filters as a grid (ZFNet Fig. 5-6 style) and occlusion maps (Fig. 7).

Everything renders with matplotlib's Agg backend into bytes; nothing opens a window.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402


def min_max_scale(array: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant array becomes 0.5."""
    lo, hi = float(array.min()), float(array.max())
    if hi - lo < 1e-12:
        return np.full_like(array, 0.5, dtype=np.float32)
    return ((array - lo) / (hi - lo)).astype(np.float32)


def filter_grid(weight: torch.Tensor, pad: int = 1, columns: int | None = None) -> np.ndarray:
    """First-layer filters (F, 3, k, k) -> one (rows·(k+pad)+pad, cols·(k+pad)+pad, 3) uint8
    grid, each filter min-max normalised on its own, white separators."""
    w = weight.detach().float().cpu().numpy()
    if w.ndim != 4 or w.shape[1] != 3:
        raise ValueError(f"expected RGB filters of shape (F, 3, kh, kw), got {w.shape}")
    count, _, kh, kw = w.shape
    cols = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    grid = np.ones((rows * (kh + pad) + pad, cols * (kw + pad) + pad, 3), np.float32)
    for n in range(count):
        r, c = divmod(n, cols)
        top, left = pad + r * (kh + pad), pad + c * (kw + pad)
        grid[top : top + kh, left : left + kw] = min_max_scale(w[n].transpose(1, 2, 0))
    return (grid * 255).round().astype(np.uint8)


def png_bytes(rgb: np.ndarray, scale: int = 1) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG, each pixel repeated ``scale`` times per axis."""
    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def filters_png(model: nn.Module, scale: int = 4) -> bytes:
    """The first conv layer's filters as a PNG grid (each filter min-max normalised)."""
    first = next(m for m in model.features if isinstance(m, nn.Conv2d))
    return png_bytes(filter_grid(first.weight), scale=scale)


def display_image(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) model input (mean-subtracted) as a viewable (H, W, 3) float in [0, 1]."""
    return min_max_scale(image.detach().float().cpu().permute(1, 2, 0).numpy())


def occlusion_png(
    image: torch.Tensor, maps: dict, class_names: list[str] | None = None, dpi: int = 100
) -> bytes:
    """ZFNet Fig. 7 style: the image, then (b) feature-map activation, (d) probability of the
    class and (e) most probable label, each over occluder positions (square centres)."""
    rgb = display_image(image)
    size = int(maps["size"])
    tops, lefts = np.asarray(maps["tops"]), np.asarray(maps["lefts"])
    # Each map cell is drawn at the square's centre, so the maps align with the image.
    half_y = (tops[1] - tops[0]) / 2 if len(tops) > 1 else 0.5
    half_x = (lefts[1] - lefts[0]) / 2 if len(lefts) > 1 else 0.5
    cy, cx = tops + size / 2, lefts + size / 2
    extent = (cx[0] - half_x, cx[-1] + half_x, cy[-1] + half_y, cy[0] - half_y)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), dpi=dpi)
    axes[0].imshow(rgb)
    axes[0].set_title("input")
    panels = [
        (maps["feature"], f"(b) layer-5 map {maps['channel']} total activation", "viridis"),
        (maps["prob"], f"(d) p(class {maps['target']})", "jet"),
        (maps["label"], "(e) most probable label", "tab20"),
    ]
    for ax, (values, title, cmap) in zip(axes[1:], panels, strict=True):
        ax.imshow(rgb, alpha=0.35)
        shown = ax.imshow(values, cmap=cmap, extent=extent, alpha=0.8, interpolation="nearest")
        ax.set_xlim(0, rgb.shape[1])
        ax.set_ylim(rgb.shape[0], 0)
        ax.set_title(title, fontsize=9)
        if cmap != "tab20":
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    labels = np.unique(maps["label"])
    names = [class_names[k] if class_names else str(k) for k in labels[:8]]
    axes[3].set_xlabel("labels: " + ", ".join(names), fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _cells(tiles: list[np.ndarray], side: int, per_row: int = 3, pad: int = 1) -> np.ndarray:
    """A per_row x per_row grid of (side, side, 3) float tiles on white, 1-pixel borders."""
    n = per_row * (side + pad) + pad
    grid = np.ones((n, n, 3), np.float32)
    for i, tile in enumerate(tiles[: per_row * per_row]):
        r, c = divmod(i, per_row)
        top, left = pad + r * (side + pad), pad + c * (side + pad)
        grid[top : top + side, left : left + side] = tile
    return grid


def deconv_figure(model: nn.Module, tops: dict, layer: int, gap: int = 4) -> np.ndarray:
    """ZFNet Fig. 2 style, one row per feature map: the 3x3 grid of deconvnet projections of
    its top-9 activations beside the 3x3 grid of the image patches they see; uint8 (H, W, 3).

    ``tops`` is :func:`convplat.visualize.top.top_activations`' result. Each projection is
    cropped to the activation's receptive field and min-max normalised on its own.
    """
    from convplat.visualize.deconv import deconv_project
    from convplat.visualize.top import field_box

    rows = []
    for channel, acts in tops.items():
        if not acts:
            raise ValueError(f"expected at least one activation for feature map {channel}")
        projections, patches = [], []
        for act in acts:
            image_side = act.image.shape[-1]
            top, left, side = field_box(model, layer, act.y, act.x, image_side)
            proj = deconv_project(model, act.image, layer, channel, act.y, act.x)
            crop = (slice(top, top + side), slice(left, left + side))
            projections.append(min_max_scale(proj.permute(1, 2, 0).numpy()[crop]))
            patches.append(display_image(act.image)[crop])
        left_grid, right_grid = _cells(projections, side), _cells(patches, side)
        spacer = np.ones((left_grid.shape[0], gap, 3), np.float32)
        rows.append(np.concatenate([left_grid, spacer, right_grid], axis=1))
        rows.append(np.ones((gap, rows[-1].shape[1], 3), np.float32))
    figure = np.concatenate(rows[:-1], axis=0)
    return (figure * 255).round().astype(np.uint8)


def evolution_figure(
    models: list[nn.Module], batches, layer: int, maps: list[int], pad: int = 1
) -> np.ndarray:
    """ZFNet Fig. 4 style: rows = feature maps, columns = the given models (one per saved
    epoch); each cell the deconvnet projection of that map's strongest activation over
    ``batches()`` (a callable returning a fresh iterable of model inputs), cropped to its
    receptive field and min-max normalised; uint8 (H, W, 3)."""
    from convplat.visualize.deconv import deconv_project
    from convplat.visualize.top import field_box, top_activations

    columns = []
    side = 0
    for model in models:
        tops = top_activations(model, batches(), layer, maps, k=1)
        cells = []
        for channel in maps:
            if not tops[channel]:
                raise ValueError("expected at least one image in the batches")
            act = tops[channel][0]
            top, left, side = field_box(model, layer, act.y, act.x, act.image.shape[-1])
            proj = deconv_project(model, act.image, layer, channel, act.y, act.x)
            crop = proj.permute(1, 2, 0).numpy()[top : top + side, left : left + side]
            cells.append(min_max_scale(crop))
        columns.append(cells)
    step = side + pad
    grid = np.ones((len(maps) * step + pad, len(models) * step + pad, 3), np.float32)
    for c, cells in enumerate(columns):
        for r, cell in enumerate(cells):
            top, left = pad + r * step, pad + c * step
            grid[top : top + side, left : left + side] = cell
    return (grid * 255).round().astype(np.uint8)
