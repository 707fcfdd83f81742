"""Correspondence analysis (Zeiler & Fergus 2014 §4.3, Table 1): does covering the same object
part in different images change the deep features in the same way?

For image i and layer l, ``eps_i = x_i - x~_i`` is the change of the layer's feature vector
when the part is covered (``x~_i``: the occluded copy). The paper scores
``Delta_l = sum_{i != j} H(sign(eps_i), sign(eps_j))`` with H the Hamming distance; its Table 1
values (0.067 ± 0.007 ...) are only possible with H as the *fraction* of differing entries, so
that is what is computed, reported as the mean ± std over image pairs (and as the literal sum
over ordered pairs). A low value means a consistent change: the net relates the parts. The
control covers a random patch of the same size in each image. Layers: 5 = the last conv layer's
pooled maps, flattened; 7 = fc7 (``forward_head(pre_logits=True)``, eval mode).

As in ``occlusion.py`` the cover is the mean image, i.e. zero in the model input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from convplat.errors import ConvplatError

LAYERS = (5, 7)
Mask = tuple[int, int, int, int]  # x, y, w, h in model-input pixels


@torch.no_grad()
def layer_features(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> dict:
    """``{5: (B, C*s*s), 7: (B, fc7)}`` float32 feature vectors of model inputs, in eval mode."""
    was_training = model.training
    model.eval()
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in LAYERS}
    try:
        for start in range(0, len(images), batch_size):
            pooled = model.forward_features(images[start : start + batch_size])  # (B, C, s, s)
            out[5].append(torch.flatten(pooled, 1).float().cpu())
            out[7].append(model.forward_head(pooled, pre_logits=True).float().cpu())
    finally:
        model.train(was_training)
    return {layer: torch.cat(parts) for layer, parts in out.items()}


def cover(images: torch.Tensor, masks: Sequence[Mask], fill: float = 0.0) -> torch.Tensor:
    """Copies of ``images (N, 3, H, W)`` with image n's ``masks[n]`` rectangle set to ``fill``."""
    covered = images.clone()
    for n, (x, y, w, h) in enumerate(masks):
        covered[n, :, y : y + h, x : x + w] = fill
    return covered


def sign_distances(changes: torch.Tensor) -> np.ndarray:
    """``(N, N)`` normalised Hamming distances between the signs of the rows of ``changes``
    (the fraction of entries whose sign, -1 / 0 / +1, differs)."""
    signs = torch.sign(changes)  # (N, D)
    n = signs.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        out[i] = (signs != signs[i]).float().mean(1).numpy()
    return out


def _summary(distances: list[np.ndarray]) -> dict:
    """Mean ± std over the unordered pairs of every distance matrix, and the paper's Δ (the sum
    over ordered pairs i != j, averaged over the matrices)."""
    n = distances[0].shape[0]
    rows, cols = np.triu_indices(n, k=1)
    values = np.concatenate([d[rows, cols] for d in distances])
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    pairs = None
    if len(distances) == 1:
        pairs = [
            [int(i), int(j), round(float(distances[0][i, j]), 6)]
            for i, j in zip(rows, cols, strict=True)
        ]
    return {
        "mean": float(values.mean()),
        "std": std,
        "delta": float(np.mean([d.sum() for d in distances])),
        "pairs": pairs,
    }


def random_masks(masks: Sequence[Mask], size: tuple[int, int], rng: np.random.Generator) -> list:
    """Each mask moved to a uniformly random position inside a (H, W) input, same size."""
    height, width = size
    return [
        (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
        for _, _, w, h in masks
    ]


def correspondence(
    model: nn.Module,
    images: torch.Tensor,
    masks: Sequence[Mask],
    *,
    random_draws: int = 10,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Table 1's measure for one part and for the random control.

    Args:
        images: ``(N, 3, H, W)`` model inputs, N >= 2 (the paper: 5 dog images).
        masks: one ``(x, y, w, h)`` per image, in input pixels, covering the same part.
        random_draws: random-position controls (the same mask sizes); their pairs are pooled.

    Returns:
        ``{"part": {layer: stats}, "random": {layer: stats}, "masks", "random_masks", ...}``,
        stats = ``{"mean", "std", "delta", "pairs"}`` (``pairs``: [i, j, H] for the part only).
    """
    n = images.shape[0]
    if images.ndim != 4 or n < 2:
        raise ValueError(f"expected (N >= 2, 3, H, W) images, got {tuple(images.shape)}")
    if len(masks) != n:
        raise ValueError(f"expected one mask per image ({n}), got {len(masks)}")
    for x, y, w, h in masks:
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > images.shape[3] or y + h > images.shape[2]:
            raise ValueError(
                f"mask {(x, y, w, h)} is not inside the {tuple(images.shape[2:])} input"
            )
    rng = np.random.default_rng([seed, 1])
    controls = [random_masks(masks, tuple(images.shape[2:]), rng) for _ in range(random_draws)]
    batch = torch.cat([images, cover(images, masks), *(cover(images, m) for m in controls)])
    features = layer_features(model, batch, batch_size)
    result: dict = {"images": n, "masks": [list(m) for m in masks], "random_draws": random_draws}
    result["random_masks"] = [[list(m) for m in draw] for draw in controls]
    result["part"], result["random"] = {}, {}
    for layer, f in features.items():
        original = f[:n]
        part = sign_distances(original - f[n : 2 * n])
        result["part"][str(layer)] = _summary([part])
        if random_draws:
            draws = [
                sign_distances(original - f[(2 + r) * n : (3 + r) * n]) for r in range(random_draws)
            ]
            result["random"][str(layer)] = _summary(draws)
    return result


def format_correspondence(result: dict) -> str:
    """Table 1's layout: one row per layer, mean ± std of the part and the random control."""
    name = result.get("name", "part")
    lines = [
        f"correspondence over {result['images']} images (normalised Hamming distance of "
        "sign(eps), mean ± std over image pairs; lower = more consistent)",
        f"{'layer':<7}{name:>20}{'random':>20}",
    ]
    for layer in result["part"]:
        part = result["part"][layer]
        rand = result["random"].get(layer)
        cells = [f"{part['mean']:.3f} ± {part['std']:.3f}"]
        cells.append(f"{rand['mean']:.3f} ± {rand['std']:.3f}" if rand else "-")
        lines.append(f"{layer:<7}{cells[0]:>20}{cells[1]:>20}")
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------


def parse_mask(text: str) -> Mask:
    """``"x,y,w,h"`` -> integers (x, y >= 0; w, h >= 1); ConvplatError otherwise."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] < 1 or values[3] < 1:
        raise ConvplatError(
            f"--mask: expected x,y,w,h (integers, x,y >= 0, w,h >= 1), got {text!r}"
        )
    return values  # type: ignore[return-value]


def image_to_input(mask: Mask, geometry, frame: int, size: int) -> Mask:
    """A rectangle in original image pixels -> model-input pixels, through the preprocessing
    (shorter side to ``frame``, centre ``frame`` crop, centre ``size`` window), clipped.

    Raises:
        ConvplatError: nothing of the rectangle is inside the model's centre crop.
    """
    x, y, w, h = mask
    offset = (frame - size) // 2
    sx = geometry.decoded_w / geometry.src_w * geometry.scale
    sy = geometry.decoded_h / geometry.src_h * geometry.scale
    ox = geometry.left * geometry.scale + offset
    oy = geometry.top * geometry.scale + offset
    x0, x1 = max(0, math.floor(x * sx - ox)), min(size, math.ceil((x + w) * sx - ox))
    y0, y1 = max(0, math.floor(y * sy - oy)), min(size, math.ceil((y + h) * sy - oy))
    if x1 <= x0 or y1 <= y0:
        raise ConvplatError(
            f"--mask {','.join(map(str, mask))} lies outside the centre {size}x{size} crop the "
            "model sees; give the part's box in the image's own pixels"
        )
    return (x0, y0, x1 - x0, y1 - y0)


def run_correspondence(
    run: str,
    images: Sequence[str],
    masks: Sequence[str],
    *,
    name: str = "part",
    random_draws: int = 10,
    seed: int = 0,
    coords: str = "image",
    out: str | None = None,
    weights: str = "final",
) -> tuple[str, dict]:
    """``convplat visualize correspondence RUN IMAGES… --mask x,y,w,h``: Table 1 for one part
    -> ``correspondence-<name>.json`` in ``RUN/visualize`` (or ``out``); returns its path and
    the result.

    ``masks``: one for every image, or one for all; ``coords``: ``image`` (original image
    pixels, mapped through the preprocessing) or ``input`` (model-input pixels).
    """
    from convplat.pipeline.image import process_image
    from convplat.visualize.runs import (
        image_file,
        load_model,
        mean_stats,
        out_location,
        preprocess,
        write_output,
    )

    if len(images) < 2:
        raise ConvplatError(f"expected at least 2 images (the paper uses 5), got {len(images)}")
    if len(masks) not in (1, len(images)):
        raise ConvplatError(
            f"expected one --mask for all images or one per image ({len(images)}), got {len(masks)}"
        )
    if coords not in ("image", "input"):
        raise ConvplatError(f"--coords: expected image or input, got {coords!r}")
    if random_draws < 0:
        raise ConvplatError(f"--random-draws: expected >= 0, got {random_draws}")
    if not name or any(c in name for c in "/\\"):
        raise ConvplatError(f"--name: expected a file-name part, got {name!r}")
    rects = [parse_mask(m) for m in masks] * (len(images) if len(masks) == 1 else 1)
    blobs = []
    for path in images:
        blobs.append(image_file(path).read_bytes())
    model, config = load_model(run, weights=weights)
    size = model.input_size
    inputs = torch.stack(  # (N, 3, size, size)
        [preprocess(b, config, size, name=str(p)) for p, b in zip(images, blobs, strict=True)]
    )
    if coords == "image":
        frame = int(mean_stats(config)["mean"].shape[0])
        rects = [
            image_to_input(r, process_image(b, frame).geometry, frame, size)
            for r, b in zip(rects, blobs, strict=True)
        ]
    else:
        for r in rects:
            if r[0] + r[2] > size or r[1] + r[3] > size:
                raise ConvplatError(f"--mask {r} is not inside the {size}x{size} model input")
    result = correspondence(model, inputs, rects, random_draws=random_draws, seed=seed)
    result.update(
        name=name,
        run=str(run),
        image_files=[str(p) for p in images],
        coords=coords,
        seed=seed,
        measure="normalised Hamming distance of sign(x - x_masked); layer 5 = pooled conv5, "
        "layer 7 = fc7",
    )
    location = out_location(run, out)
    file = f"correspondence-{name}.json"
    write_output(location, file, (json.dumps(result, indent=1) + "\n").encode())
    return location.join(file), result
