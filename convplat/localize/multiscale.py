"""The frozen classification network and the box regressor at several scales (O §3.3, §4):
offset-pooled maps, the regressor at every offset, and the L2 regression loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convplat.errors import ConfigError
from convplat.localize.regressor import BoxRegressor, window_targets
from convplat.training.dense import interleave, offset_pool, scaled_size, window_boxes


def last_conv_channels(model: nn.Module) -> int:
    """Channels of the pooled maps the classifier (and so the regressor) reads."""
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def too_small_scales(
    model_name: str, num_classes: int, scales: Sequence[int], stride: str
) -> list[int]:
    """The ``scales`` (shorter sides) at which a square frame gives pooled maps smaller than
    the classifier's window at some offset, so no box can come from them. Found on the meta
    device (shapes only: no weights, no compute) before Ray starts or any data is read; a
    scale too small for the conv layers themselves would otherwise fail deep inside torch."""
    from convplat.training.models import create_model

    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes)
    small = []
    for scale in scales:
        images = torch.zeros((1, 3, scale, scale), device="meta")
        try:
            pooled = offset_pool(model, model.forward_features(images, pool=False), stride)
            fits = min(pooled.shape[-2:]) >= model.feature_size
        except RuntimeError:  # "Output size is too small" in a conv or pooling layer
            fits = False
        if not fits:
            small.append(scale)
    return small


def check_scales(model_name: str, num_classes: int, scales: Sequence[int], stride: str) -> None:
    """ConfigError when any of ``scales`` gives no window (see :func:`too_small_scales`)."""
    small = too_small_scales(model_name, num_classes, scales, stride)
    if small:
        raise ConfigError(
            f"--scales: {', '.join(map(str, small))} too small for one {stride}-stride window "
            f"of {model_name}; use larger --scales"
        )


def freeze_all(model: nn.Module) -> nn.Module:
    """Every parameter fixed and eval mode: O §4 "fix the feature extraction layers (1-5)";
    the classifier is not trained either (unlike transfer's ``freeze``, which cuts the net)."""
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def build_regressor(model: nn.Module, record: dict) -> BoxRegressor:
    """The regressor a localization ``config.json`` record (or a LocalizeConfig dict) asks for."""
    return BoxRegressor(
        last_conv_channels(model),
        model.feature_size,
        num_classes=model.num_classes,
        per_class=bool(record["per_class"]),
        hidden=tuple(record["hidden"]),
    )


def frames_to_inputs(images: Tensor, transform, flips: Tensor | None = None) -> Tensor:
    """uint8 frames (B, S, S, 3) -> mean-subtracted, scaled float (B, 3, S, S), as training
    saw them (the per-pixel mean over the whole frame), mirrored where ``flips`` is 1."""
    windows = torch.zeros((images.shape[0], 3), dtype=torch.int64, device=images.device)
    if flips is not None:
        windows[:, 2] = flips
    return transform(images, windows, lighting=False)


def rescale_batch(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, 3, H, W) -> (B, 3, *size), antialiased bilinear like ``dense.rescale``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


@dataclass
class ScaleOutput:
    """Dense outputs of one scale: regressor ``boxes`` (B, 4·boxes, H, W), class ``logits``
    (B, C, H, W) or None, the ``windows`` (H·W, 4) in scaled pixels and the scale ``factor``
    (sx, sy) from the frame to the scaled image."""

    boxes: Tensor
    logits: Tensor | None
    windows: Tensor
    factor: tuple[float, float]


def regress_pooled(regressor: nn.Module, pooled: Tensor) -> Tensor:
    """The regressor at every offset of offset-pooled maps (n*n, B, C, h, w), interleaved
    into one (B, 4·boxes, H, W) map (O §3.3, Fig. 8)."""
    offsets, batch, channels, h, w = pooled.shape
    raw = regressor(pooled.reshape(offsets * batch, channels, h, w))
    return interleave(raw.view(offsets, batch, *raw.shape[1:]))


def run_scale(
    model: nn.Module,
    regressor: nn.Module,
    images: Tensor,
    scale: int,
    stride: str,
    classify: bool = False,
) -> ScaleOutput:
    """Frozen conv layers, offset pooling, then regressor (and classifier) at every offset,
    interleaved into one map per image (O §3.3, Fig. 8)."""
    height, width = images.shape[-2:]
    size = scaled_size(height, width, scale)
    with torch.no_grad():
        unpooled = model.forward_features(rescale_batch(images, size), pool=False)
        pooled = offset_pool(model, unpooled, stride)  # (n*n, B, C, h, w)
    offsets, batch, channels, h, w = pooled.shape
    s = model.feature_size
    if h < s or w < s:
        raise ConfigError(
            f"scale {scale}: a {size[0]}x{size[1]} image gives {h}x{w} pooled maps, smaller "
            f"than the {s}x{s} the {model.input_size}-pixel network needs; use larger --scales"
        )
    boxes = regress_pooled(regressor, pooled)  # (B, 4·boxes, H, W)
    logits = None
    if classify:
        with torch.no_grad():
            out = model.classifier_as_conv()(pooled.reshape(offsets * batch, channels, h, w))
            logits = interleave(out.view(offsets, batch, *out.shape[1:]))  # (B, C, H, W)
    windows = window_boxes(model, boxes.shape[-2], boxes.shape[-1], stride).to(images.device)
    return ScaleOutput(boxes, logits, windows, (size[1] / width, size[0] / height))


def regression_loss(
    model: nn.Module,
    regressor: BoxRegressor,
    images: Tensor,
    labels: Tensor,
    boxes: Sequence[Tensor],
    scales: Sequence[int],
    stride: str = "fine",
    min_inside: float = 0.5,
) -> tuple[Tensor, int]:
    """O §4's L2 loss: squared error of the 4 edges (window-relative), summed over the edges
    and averaged over every training window of every image at every scale.

    Returns the loss and the number of windows it averaged (0: a zero loss that still touches
    every regressor parameter, so DDP's gradient all-reduce sees the same graph on all ranks).
    """
    module = regressor.module if hasattr(regressor, "module") else regressor
    total = images.new_zeros(())
    count = 0
    for scale in scales:
        out = run_scale(model, regressor, images, scale, stride)
        predicted = module.select(out.boxes, labels)  # (B, 4, H, W)
        predicted = predicted.flatten(2).transpose(1, 2)  # (B, L, 4)
        sx, sy = out.factor
        factor = torch.tensor([sx, sy, sx, sy], device=images.device)
        for b, gt in enumerate(boxes):
            targets, mask = window_targets(
                gt.to(images.device) * factor, out.windows, model.input_size, min_inside
            )
            if mask.any():
                total = total + (predicted[b][mask] - targets[mask]).pow(2).sum()
                count += int(mask.sum())
        total = total + 0.0 * predicted.sum()
    return total / max(count, 1), count


def mirror(boxes: Tensor, width: int) -> Tensor:
    """Boxes of a left-right mirrored image of ``width`` pixels."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
