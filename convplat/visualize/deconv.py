"""ZFNet's deconvnet (Zeiler & Fergus 2014 §2.1): project one activation back to pixel space.

Forward through ``model.features`` recording the max-pool switches; keep one activation of the
L-th conv layer's ReLU output, zero everything else, then walk the layers back down:
unpool with the switches, rectify, filter with the transposed learned filters (no bias).
Contrast normalisation (LRN) is skipped on the way down, as the paper does (it only unpools,
rectifies and filters). The result equals the gradient of that activation w.r.t. the input
with each ReLU's backward replaced by a ReLU of the incoming signal and LRN's by the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_layers(model: nn.Module) -> list[int]:
    """Indices in ``model.features`` of its conv layers, in order (layer L = entry L-1)."""
    return [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]


def relu_index(model: nn.Module, layer: int) -> int:
    """Index in ``model.features`` of the ReLU after the ``layer``-th conv (1-based)."""
    convs = conv_layers(model)
    if not 1 <= layer <= len(convs):
        raise ValueError(f"expected layer in 1..{len(convs)}, got {layer}")
    index = convs[layer - 1] + 1
    if not isinstance(model.features[index], nn.ReLU):
        raise TypeError(f"expected a ReLU after conv layer {layer}, got {model.features[index]}")
    return index


@torch.no_grad()
def forward_with_switches(
    model: nn.Module, images: torch.Tensor, stop: int
) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, tuple[int, int]]]:
    """Run ``model.features[: stop + 1]`` on ``images`` (B, 3, H, W).

    Returns:
        the output of module ``stop``; the max-pool switches by module index (flat indices into
        each pool's input plane, as ``F.max_pool2d(return_indices=True)`` gives them); and the
        spatial input size of every module by index (to undo strides exactly on the way down).
    """
    switches: dict[int, torch.Tensor] = {}
    sizes: dict[int, tuple[int, int]] = {}
    x = images
    for i, module in enumerate(model.features[: stop + 1]):
        sizes[i] = (x.shape[-2], x.shape[-1])
        if isinstance(module, nn.MaxPool2d):
            # The module's own parameters, ceil_mode included, so maps match the forward pass.
            x, switches[i] = F.max_pool2d(
                x,
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                ceil_mode=module.ceil_mode,
                return_indices=True,
            )
        else:
            x = module(x)
    return x, switches, sizes


def unpool(x: torch.Tensor, switch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Place each pooled value at its switch in a zero map of ``size``.

    Overlapping pools (3x3 stride 2) can give two outputs the same switch; their values are
    summed, the adjoint of max pooling (``F.max_unpool2d`` would keep only one of them).
    """
    b, c = x.shape[:2]
    out = x.new_zeros(b, c, size[0] * size[1])
    out.scatter_add_(2, switch.flatten(2), x.flatten(2))
    return out.view(b, c, *size)


def conv_down(x: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """Filter with the transposed learned filters (flipped; no bias), back to ``size``."""
    stride, padding, dilation = conv.stride, conv.padding, conv.dilation
    if isinstance(padding, str):
        raise ValueError(f"string padding {padding!r} is not supported")
    extra = []
    for d in range(2):  # output_padding recovers the rows/columns the forward stride dropped
        full = (x.shape[2 + d] - 1) * stride[d] - 2 * padding[d]
        full += dilation[d] * (conv.kernel_size[d] - 1) + 1
        extra.append(size[d] - full)
    return F.conv_transpose2d(
        x, conv.weight, None, stride, padding, tuple(extra), conv.groups, dilation
    )


@torch.no_grad()
def project_down(
    model: nn.Module,
    maps: torch.Tensor,
    top: int,
    switches: dict[int, torch.Tensor],
    sizes: dict[int, tuple[int, int]],
) -> torch.Tensor:
    """Deconvnet from the output of ``model.features[top]`` down to pixels.

    Args:
        maps: (N, C, h, w) signals at module ``top``'s output; N may exceed the batch the
            switches were recorded on only if that batch is 1 (they are broadcast).
    Returns:
        (N, 3, H, W) projections.
    """
    x = maps
    for i in range(top, -1, -1):
        module = model.features[i]
        if isinstance(module, nn.MaxPool2d):
            s = switches[i]
            x = unpool(x, s.expand(x.shape[0], *s.shape[1:]), sizes[i])
        elif isinstance(module, nn.ReLU):
            x = F.relu(x)  # rectify (§2.1)
        elif isinstance(module, nn.Conv2d):
            x = conv_down(x, module, sizes[i])
        # LRN / anything else: skipped, as ZFNet §2.1 does for contrast normalisation.
    return x


@torch.no_grad()
def deconv_project(
    model: nn.Module, image: torch.Tensor, layer: int, channel: int, y: int, x: int
) -> torch.Tensor:
    """Project one activation of conv layer ``layer`` (its ReLU output) to pixel space.

    Args:
        image: (3, H, W) float model input (mean-subtracted, scaled: what ``forward`` takes).
        layer: 1-based conv layer; the activation is read after that conv's ReLU.
        channel, y, x: the feature map and position of the activation.
    Returns:
        (3, H, W) projection.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image of shape (3, H, W), got {tuple(image.shape)}")
    top = relu_index(model, layer)
    acts, switches, sizes = forward_with_switches(model, image[None], top)
    keep = torch.zeros_like(acts)  # all other activations zero (§2.1)
    keep[0, channel, y, x] = acts[0, channel, y, x]
    return project_down(model, keep, top, switches, sizes)[0]
