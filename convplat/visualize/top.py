"""Top-k activations per feature map over a stream of images, and their receptive fields
(ZFNet §4, Fig. 2: the top 9 activations of a feature map across the validation data)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from convplat.visualize.deconv import relu_index


@dataclass(order=True)
class Activation:
    """One strong activation: its value, where it sits, and the image it came from."""

    value: float
    order: int  # stream position, a stable tie-break
    y: int = field(compare=False)
    x: int = field(compare=False)
    image: torch.Tensor = field(compare=False, repr=False)  # (3, H, W) model input


@torch.inference_mode()
def top_activations(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    layer: int,
    channels: list[int],
    k: int = 9,
) -> dict[int, list[Activation]]:
    """The ``k`` strongest activations of each feature map in ``channels`` at conv ``layer``
    (after its ReLU), at most one per image (its spatial max), streamed over ``batches`` of
    (B, 3, H, W) model inputs; strongest first."""
    top = relu_index(model, layer)
    layers = model.features[: top + 1]
    heaps: dict[int, list[Activation]] = {c: [] for c in channels}
    seen = 0
    for images in batches:
        maps = layers(images)[:, channels]  # (B, len(channels), h, w)
        best, where = maps.flatten(2).max(dim=2)  # (B, len(channels))
        width = maps.shape[-1]
        for b in range(images.shape[0]):
            for j, c in enumerate(channels):
                value = float(best[b, j])
                heap = heaps[c]
                if len(heap) == k and value <= heap[0].value:
                    continue
                y, x = divmod(int(where[b, j]), width)
                item = Activation(value, -(seen + b), y, x, images[b].clone())
                (heapq.heappushpop if len(heap) == k else heapq.heappush)(heap, item)
        seen += images.shape[0]
    return {c: sorted(h, reverse=True) for c, h in heaps.items()}


def receptive_field(model: nn.Module, layer: int) -> tuple[int, int, float]:
    """(size, jump, start) of conv ``layer``'s units in input pixels: unit (y, x) sees the
    ``size`` x ``size`` square centred at (start + y·jump, start + x·jump) (padding included)."""
    size, jump, start = 1, 1, 0.0
    for module in model.features[: relu_index(model, layer) + 1]:
        if isinstance(module, nn.Conv2d | nn.MaxPool2d):
            k = module.kernel_size
            k = k[0] if isinstance(k, tuple) else k
            s = module.stride
            s = s[0] if isinstance(s, tuple) else s
            p = module.padding
            p = p[0] if isinstance(p, tuple) else p
            start += ((k - 1) / 2 - p) * jump
            size += (k - 1) * jump
            jump *= s
    return size, jump, start


def field_box(model: nn.Module, layer: int, y: int, x: int, side: int) -> tuple[int, int, int]:
    """(top, left, size) of the square patch an activation sees, shifted to lie inside a
    ``side`` x ``side`` image (the size capped at ``side``)."""
    size, jump, start = receptive_field(model, layer)
    size = min(size, side)
    top = round(start + y * jump - (size - 1) / 2)
    left = round(start + x * jump - (size - 1) / 2)
    clamp = lambda v: max(0, min(v, side - size))  # noqa: E731
    return clamp(top), clamp(left), size
