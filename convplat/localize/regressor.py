"""OverFeat's bounding-box regression network (O §4, Fig. 8; PAPERS §3.5).

It replaces the classifier on the frozen layers 1-5: a first layer that sees an ``s x s``
neighbourhood of the pooled last-conv maps (``s`` = the model's ``feature_size``, as fc6 does),
a 1x1 hidden layer, and an output of 4 box edges per location - one 4-vector for every class
with ``per_class`` (the paper's PCR) or one shared by all classes (SCR, the winning entry).
All layers are convolutions, so the regressor slides over a larger image like the classifier.

Coordinates: the output at a location is the box ``(x0, y0, x1, y1)`` in the coordinates of
the window that location sees, divided by the window side (``input_size``): ``(0, 0, 1, 1)``
is the whole window. :func:`to_image_boxes` turns it into image pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from convplat.config.localize import HIDDEN


class BoxRegressor(nn.Module):
    """Pooled maps ``(B, C, h, w)`` -> box edges ``(B, 4 * outputs, h - s + 1, w - s + 1)``.

    Args:
        in_channels: channels of the pooled last-conv maps (the paper's layer 5).
        kernel: ``s``, the model's ``feature_size``.
        num_classes: classes of the classifier; used only with ``per_class``.
        per_class: one box per class (4 * num_classes outputs) instead of one shared box.
        hidden: widths of the two hidden layers (the paper's 4096 and 1024).
    """

    def __init__(
        self,
        in_channels: int,
        kernel: int,
        num_classes: int = 1,
        per_class: bool = False,
        hidden: tuple[int, int] = HIDDEN,
    ) -> None:
        super().__init__()
        if len(hidden) != 2 or min(hidden) < 1:
            raise ValueError(f"expected two positive hidden widths, got {hidden}")
        self.kernel = int(kernel)
        self.per_class = bool(per_class)
        self.num_boxes = int(num_classes) if per_class else 1
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden[0], kernel),  # (B, 4096, h-s+1, w-s+1)
            nn.ReLU(inplace=False),
            nn.Conv2d(hidden[0], hidden[1], 1),  # (B, 1024, ., .)
            nn.ReLU(inplace=False),
            nn.Conv2d(hidden[1], 4 * self.num_boxes, 1),  # (B, 4 * boxes, ., .)
        )
        for layer in self.layers:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        # Start from "the object fills the window" with small corrections, so the first L2
        # gradients are about the box, not about undoing a random offset.
        last = self.layers[-1]
        nn.init.normal_(last.weight, 0.0, 1e-3)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(self.num_boxes))

    def forward(self, pooled: Tensor) -> Tensor:
        return self.layers(pooled)

    def select(self, output: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-location boxes of given classes: ``(B, 4 * boxes, H, W)`` -> ``(B, 4, H, W)``.

        With single-class regression the shared box is returned whatever ``labels`` says;
        with ``per_class``, ``labels`` (B,) picks each image's class.
        """
        batch, _, height, width = output.shape
        boxes = output.view(batch, self.num_boxes, 4, height, width)
        if not self.per_class:
            return boxes[:, 0]
        if labels is None:
            raise ValueError("a per-class regressor needs the labels to pick boxes for")
        return boxes[torch.arange(batch, device=output.device), labels.to(output.device)]


def to_image_boxes(relative: Tensor, windows: Tensor, window_size: int) -> Tensor:
    """Window-relative boxes ``(..., L, 4)`` -> image pixels, given the windows ``(L, 4)``."""
    origin = windows[:, :2].repeat(1, 2)  # (L, 4): x0, y0, x0, y0
    return relative * window_size + origin


def to_window_boxes(boxes: Tensor, windows: Tensor, window_size: int) -> Tensor:
    """Image-pixel boxes ``(..., L, 4)`` -> coordinates relative to each window ``(L, 4)``."""
    origin = windows[:, :2].repeat(1, 2)
    return (boxes - origin) / window_size


def window_targets(
    boxes: Tensor, windows: Tensor, window_size: int, min_inside: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Training targets of one image at one scale: which windows train, and on which box.

    A window trains on a ground-truth box when at least ``min_inside`` of the box's area lies
    inside the window (O §4: windows that see less of the object are left to others that see
    more); of several such boxes it takes the one with the highest IoU with the window.

    Args:
        boxes: (K, 4) ground-truth boxes in the scaled image's pixels.
        windows: (L, 4) the windows of the output locations (``dense.window_boxes``).

    Returns:
        ``(targets (L, 4) window-relative, mask (L,) bool)``; rows where ``mask`` is False
        are meaningless.
    """
    from convplat.localize.boxes import box_intersection, box_iou

    locations = windows.shape[0]
    if boxes.numel() == 0:
        return windows.new_zeros((locations, 4)), torch.zeros(locations, dtype=torch.bool)
    boxes = boxes.to(windows)
    inside = box_intersection(windows, boxes)  # (L, K) pixels²
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(1e-6)
    eligible = inside / area >= min_inside  # (L, K)
    iou = torch.where(eligible, box_iou(windows, boxes), torch.full_like(inside, -1.0))
    best = iou.argmax(dim=1)  # (L,)
    targets = to_window_boxes(boxes[best], windows, window_size)
    return targets, eligible.any(dim=1)
