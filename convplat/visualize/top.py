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
    """One strong activation: its value, where it sits, and the image it came from.

    Activations compare by (value, order): ``order`` breaks ties, the sample's key when the
    stream carries keys (the same winner whatever order or process saw the samples),
    else minus the stream position (the first seen wins).
    """

    value: float
    order: int | str
    y: int = field(compare=False)
    x: int = field(compare=False)
    image: torch.Tensor = field(compare=False, repr=False)  # (3, H, W) model input


@torch.inference_mode()
def top_activations(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, list[str]]],
    layer: int,
    channels: list[int],
    k: int = 9,
) -> dict[int, list[Activation]]:
    """The ``k`` strongest activations of each feature map in ``channels`` at conv ``layer``
    (after its ReLU), at most one per image (its spatial max), streamed over ``batches`` of
    (B, 3, H, W) model inputs, or (inputs, sample keys) pairs; strongest first."""
    return top_of_maps(model.features[: relu_index(model, layer) + 1], batches, channels, k)


def top_of_maps(
    layers: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, list[str]]],
    channels: list[int],
    k: int = 9,
) -> dict[int, list[Activation]]:
    """:func:`top_activations` for the maps that ``layers`` (a conv stack) outputs."""
    heaps: dict[int, list[Activation]] = {c: [] for c in channels}
    seen = 0
    with torch.inference_mode():
        for batch in batches:
            images, keys = batch if isinstance(batch, tuple | list) else (batch, None)
            maps = layers(images)[:, channels]  # (B, len(channels), h, w)
            best, where = maps.flatten(2).max(dim=2)  # (B, len(channels))
            width = maps.shape[-1]
            kept: dict[int, torch.Tensor] = {}  # one copy per image, shared by its maps
            for b in range(images.shape[0]):
                order = keys[b] if keys is not None else -(seen + b)
                for j, c in enumerate(channels):
                    value = float(best[b, j])
                    heap = heaps[c]
                    if len(heap) == k and (value, order) <= (heap[0].value, heap[0].order):
                        continue
                    y, x = divmod(int(where[b, j]), width)
                    if b not in kept:
                        kept[b] = images[b].clone()
                    item = Activation(value, order, y, x, kept[b])
                    (heapq.heappushpop if len(heap) == k else heapq.heappush)(heap, item)
            seen += images.shape[0]
    return {c: sorted(h, reverse=True) for c, h in heaps.items()}


def merge_tops(
    parts: Iterable[dict[int, list[Activation]]], k: int = 9
) -> dict[int, list[Activation]]:
    """The ``k`` strongest per map over several searches' results (each map's top ``k`` of
    every part suffices: the top ``k`` of a union is among the parts' top ``k``)."""
    pooled: dict[int, list[Activation]] = {}
    for part in parts:
        for c, acts in part.items():
            pooled.setdefault(c, []).extend(acts)
    return {c: heapq.nlargest(k, acts) for c, acts in pooled.items()}


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
