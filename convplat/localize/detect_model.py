"""Model surgery for OverFeat detection (O §5): the classification run's network with one
more output (background) and only its classifier trainable.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def add_background_class(model: nn.Module) -> int:
    """Widen the output layer by one background class; returns its index (the old class count).

    The object rows keep the classification run's weights (a warm start); the background row
    is fresh N(0, 0.01), bias 0 (``reset_classifier``).
    """
    old = model.classifier[-1]
    classes = model.num_classes
    model.reset_classifier(classes + 1)
    new = model.classifier[-1]
    with torch.no_grad():
        new.weight[:classes].copy_(old.weight.view_as(new.weight[:classes]))
        new.bias[:classes].copy_(old.bias)
    return classes


def set_trainable(model: nn.Module, trainable: str) -> list[nn.Parameter]:
    """Freeze everything but the classifier (fc6-fc8) or only its output layer."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    part = model.classifier if trainable == "classifier" else model.classifier[-1]
    for parameter in part.parameters():
        parameter.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


class DetectorHead(nn.Module):
    """The classifier on (L, C, s, s) pooled patches - one window each: what DDP wraps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, patches: Tensor) -> Tensor:
        return self.model.forward_head(patches)  # (L, K)
