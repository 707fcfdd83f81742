"""Conv layers on many copies of one image that differ from it only inside a rectangle.

Occlusion (ZFNet §4.2) runs the net on hundreds of copies of one image, each with a grey
square somewhere. A unit can only change if its receptive field meets the square, so each
layer is recomputed only over the window of units the square reaches (plus the input margin
the kernel needs), read from the unoccluded activations computed once, and the window is
pasted into a copy of those. From the layer where the window covers (nearly) the whole map
the rest runs normally on full maps. Same maps as the plain forward pass (to float rounding):
fewer multiply-adds, not an approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convplat.training.models.layers import LocalResponseNorm

# Modules that act on each spatial position on its own (in eval mode): the changed window
# stays where it is. LRN normalises across channels only (AlexNet §3.3).
POINTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.Identity,
    nn.Dropout,
    nn.LocalResponseNorm,
    LocalResponseNorm,
)
# Above this fraction of a map, recomputing a window costs about what the full layer does.
FULL_FRACTION = 0.8


@dataclass(frozen=True)
class _Geometry:
    """A sliding-window op along both axes: kernel extent (dilated), stride, padding."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _geometry(module: nn.Module) -> _Geometry | None:
    """The window geometry of a zero-padded conv or a max-pool, None for anything else."""
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            return None
    elif not isinstance(module, nn.MaxPool2d):
        return None
    k, d = _pair(module.kernel_size), _pair(module.dilation)
    kernel = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    return _Geometry(kernel, _pair(module.stride), _pair(module.padding))


def _reach(lo: np.ndarray, hi: np.ndarray, k: int, s: int, p: int, size: int):
    """Output units [lo', hi') whose window (k, stride s, padding p) meets input [lo, hi)."""
    first = -((-(lo + p - k + 1)) // s)  # ceil
    last = (hi - 1 + p) // s
    first, last = np.clip(first, 0, size - 1), np.clip(last, 0, size - 1)
    return first, np.maximum(last + 1, first)  # empty stays empty, at a valid place


class IncrementalFeatures:
    """``layers`` applied to copies of ``image`` changed only inside given rectangles.

    The clean activations are computed once here; :meth:`__call__` then takes a batch of
    changed copies as (rectangle contents, corner) and returns their full output maps.
    Rectangles must all have the same size (the occluder's).

    Args:
        layers: a conv stack (``model.features[:-1]`` for occlusion) in eval mode.
        image: the unchanged (3, H, W) input.
        rects: (N, 4) int rows (top, left, height, width) of every copy's changed rectangle.
        full_fraction: run a layer on full maps once its window covers this share of them
            (None: ``FULL_FRACTION``).
    """

    def __init__(
        self,
        layers: nn.Sequential,
        image: torch.Tensor,
        rects: np.ndarray,
        full_fraction: float | None = None,
    ) -> None:
        full_fraction = FULL_FRACTION if full_fraction is None else full_fraction
        rects = np.asarray(rects, np.int64).reshape(-1, 4)
        if len(np.unique(rects[:, 2:], axis=0)) > 1:
            raise ValueError("expected rectangles of one size")
        self.layers = layers
        x = image[None]
        self.inputs: list[torch.Tensor] = []  # clean input of each module, (1, C, H, W)
        for module in layers:
            self.inputs.append(x)
            x = module(x)
        self.output = x
        # Per module: None (pointwise), or (window size, per-copy window corners); the first
        # module that must see full maps ends the incremental part.
        lo_y, lo_x = rects[:, 0], rects[:, 1]
        hi_y, hi_x = lo_y + rects[:, 2], lo_x + rects[:, 3]
        self.input_corners = np.stack([lo_y, lo_x], 1)
        self.input_size = (int(rects[0, 2]), int(rects[0, 3])) if len(rects) else (0, 0)
        self.plan: list[tuple[tuple[int, int], np.ndarray] | None] = []
        self.full_from = len(layers)
        for i, module in enumerate(layers):
            if isinstance(module, POINTWISE):
                self.plan.append(None)
                continue
            geometry = _geometry(module)
            if geometry is None:
                self.full_from = i
                break
            out_h, out_w = (self.inputs[i + 1] if i + 1 < len(layers) else x).shape[-2:]
            k, s, p = geometry.kernel, geometry.stride, geometry.padding
            lo_y, hi_y = _reach(lo_y, hi_y, k[0], s[0], p[0], out_h)
            lo_x, hi_x = _reach(lo_x, hi_x, k[1], s[1], p[1], out_w)
            h = max(1, int((hi_y - lo_y).max(initial=1)))
            w = max(1, int((hi_x - lo_x).max(initial=1)))
            if h * w >= full_fraction * out_h * out_w:
                self.full_from = i
                break
            # a fixed window per layer (so copies batch), moved inside the map where needed
            corners = np.stack([np.minimum(lo_y, out_h - h), np.minimum(lo_x, out_w - w)], 1)
            self.plan.append(((h, w), corners))
        self.windows = [self._windows(i, m) for i, m in enumerate(layers[: self.full_from])]

    def _windows(self, i: int, module: nn.Module) -> torch.Tensor | None:
        """A view (out_h, out_w, C, rows, cols) of module ``i``'s clean input: at (y, x) the
        input that output window (y, x) needs, padding made explicit (zeros for a conv, -inf
        for a pool, as the op pads) with enough rows/columns after it for every window."""
        geometry = _geometry(module)
        if geometry is None:
            return None
        x = self.inputs[i][0]
        (h, w), s, k, p = self.plan[i][0], geometry.stride, geometry.kernel, geometry.padding
        size = ((h - 1) * s[0] + k[0], (w - 1) * s[1] + k[1])
        after = []
        for axis in range(2):
            last = int(self.plan[i][1][:, axis].max())  # the last window's first output
            after.append(max(0, last * s[axis] + size[axis] - x.shape[1 + axis] - p[axis]))
        value = 0.0 if isinstance(module, nn.Conv2d) else float("-inf")
        padded = F.pad(x, (p[1], after[1], p[0], after[0]), value=value)
        return padded.unfold(1, size[0], s[0]).unfold(2, size[1], s[1]).permute(1, 2, 0, 3, 4)

    def __call__(self, index: np.ndarray, fill: torch.Tensor) -> torch.Tensor:
        """Output maps (B, C, h, w) of the copies ``index`` (into ``rects``), whose changed
        rectangles hold ``fill`` (B, 3, height, width) (broadcastable)."""
        index = np.asarray(index)
        b = len(index)
        height, width = self.input_size
        window = fill.expand(b, self.inputs[0].shape[1], height, width)
        corners = self.input_corners[index]
        for i, module in enumerate(self.layers[: self.full_from]):
            step = self.plan[i]
            if step is None:
                window = module(window)
                continue
            out_corners = step[1][index]
            geometry = _geometry(module)
            s, p = geometry.stride, geometry.padding
            # the input each output window needs, from the clean padded maps ...
            ys, xs = torch.from_numpy(out_corners[:, 0]), torch.from_numpy(out_corners[:, 1])
            region = self.windows[i][ys, xs]  # (B, C, rows, cols), one gather
            # ... with the changed window pasted in (region row 0 = input row y·s - p)
            _paste(region, window, corners - out_corners * np.array(s) + np.array(p))
            window = _apply(module, region)
            corners = out_corners
        if self.full_from < len(self.layers):
            x = self.inputs[self.full_from].expand(b, -1, -1, -1).clone()
            _paste(x, window, corners)
            return self.layers[self.full_from :](x)
        x = self.output.expand(b, -1, -1, -1).clone()
        _paste(x, window, corners)
        return x


def _apply(module: nn.Module, region: torch.Tensor) -> torch.Tensor:
    """``module`` on an explicitly padded region: the same op with padding 0."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(
            region, module.weight, module.bias, module.stride, 0, module.dilation, module.groups
        )
    return F.max_pool2d(region, module.kernel_size, module.stride, 0, module.dilation)


def _paste(target: torch.Tensor, window: torch.Tensor, corners: np.ndarray) -> None:
    """target[n, :, y:y+h, x:x+w] = window[n] for each corner (y, x), clipped to target."""
    h, w = window.shape[-2:]
    height, width = target.shape[-2:]
    for n, (y, x) in enumerate(corners.tolist()):
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + h, height), min(x + w, width)
        if y1 > y0 and x1 > x0:
            target[n, :, y0:y1, x0:x1] = window[n, :, y0 - y : y1 - y, x0 - x : x1 - x]
