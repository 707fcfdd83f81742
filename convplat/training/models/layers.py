"""Layers the papers use that PyTorch does not provide as written: the paper's LRN and an
fc layer evaluated as a convolution (OverFeat's dense form)."""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn


def _window_pairs(
    size: int, channels: int, columns: int = 1, transpose: bool = False
) -> list[tuple[slice, slice]]:
    """(dst, src) channel slices such that t + Σ_pairs t[:, src] placed at [:, dst] is the LRN
    window sum Σ_{j=i-size//2}^{i+(size-1)//2} t_j, clipped to the column of i (§3.3).

    ``transpose`` gives the adjoint window (the same one for odd sizes), for the backward.
    """
    below, above = size // 2, (size - 1) // 2
    if transpose:
        below, above = above, below
    width = channels // columns
    pairs = []
    for first in range(0, channels, width):  # each column on its own
        end = first + width
        for off in range(1, min(below, width - 1) + 1):  # neighbours j = i - off
            pairs.append((slice(first + off, end), slice(first, end - off)))
        for off in range(1, min(above, width - 1) + 1):  # neighbours j = i + off
            pairs.append((slice(first, end - off), slice(first + off, end)))
    return pairs


@functools.lru_cache(maxsize=64)
def _window_weights(
    channels: int,
    size: int,
    columns: int,
    alpha: float,
    k: float,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W, Wᵀ, bias) of the 1x1 convolution d = k + α Σ_window a_j² over ``a²`` (§3.3).

    W[i, j] = α when j is in i's window, j ∈ [i - size//2, i + (size-1)//2] within i's column;
    Wᵀ is the adjoint window for the backward (the same matrix for odd sizes).
    """
    # Cached across calls, so built outside inference mode even when first asked for inside
    # it: a later training step saves these weights for its backward.
    with torch.inference_mode(False):
        idx = torch.arange(channels)
        offset = idx[None, :] - idx[:, None]  # j - i
        width = channels // columns
        inside = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
        inside &= (idx[:, None] // width) == (idx[None, :] // width)
        weight = inside.to(dtype) * alpha
        bias = torch.full((channels,), k, dtype=dtype, device=device)
        w = weight[:, :, None, None].to(device)
        wt = weight.T.contiguous()[:, :, None, None].to(device)
    return w, wt, bias


def _pow_neg(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d^-β; β = 3/4 as rsqrt(d·sqrt(d)), several times faster than pow on CPU."""
    if beta == 0.75:
        s = d.sqrt()
        return s.mul_(d).rsqrt_()
    return d.pow(-beta)


def conv_windows(device: torch.device) -> bool:
    """Window sums as a 1x1 convolution on accelerators (one matrix product per sum), as
    shifted adds on the CPU (there a few cached memory passes beat the matrix product)."""
    return device.type not in ("cpu", "meta")


def _full_precision(device: torch.device):
    """A context with autocast off for ``device`` (where autocast exists for it)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _ShiftLRN(torch.autograd.Function):
    """b_i = a_i d_i^-β with d_i = k + α Σ_window a_j², and its hand-written gradient

    ∂L/∂a_i = g_i d_i^-β − 2αβ a_i Σ_{j: i in window(j)} g_j a_j d_j^(-β-1).

    Window sums as shifted in-place adds over channel slices (a few memory passes, any memory
    format): about 2-3x faster forward+backward on CPU than ``F.local_response_norm``'s
    avg_pool3d, and plain enough for torch.compile to trace and fuse.
    """

    @staticmethod
    def forward(ctx, a, size: int, alpha: float, beta: float, k: float, columns: int):
        sq = a * a
        d = sq.mul(alpha).add_(k)  # (B, C, H, W): k + α a_i², then the neighbours
        for dst, src in _window_pairs(size, a.shape[1], columns):
            d[:, dst].add_(sq[:, src], alpha=alpha)
        scale = _pow_neg(d, beta)
        ctx.save_for_backward(a, d, scale)
        ctx.constants = (size, alpha, beta, columns)
        return a * scale

    @staticmethod
    def backward(ctx, grad):
        a, d, scale = ctx.saved_tensors
        size, alpha, beta, columns = ctx.constants
        g_scaled = grad * scale  # g_i d_i^-β
        t = (g_scaled * a).div_(d)  # g_j a_j d_j^(-β-1)
        c = -2.0 * alpha * beta
        out = torch.addcmul(g_scaled, a, t, value=c)
        for dst, src in _window_pairs(size, a.shape[1], columns, transpose=True):
            out[:, dst].addcmul_(a[:, dst], t[:, src], value=c)
        return out, None, None, None, None, None


class _ConvLRN(torch.autograd.Function):
    """The same function and gradient as :class:`_ShiftLRN`, each window sum one 1x1
    convolution with a banded (C, C) matrix: one kernel instead of a launch and a memory pass
    per neighbour. Autocast is held off around it: sums of squares lose too much in bf16.
    """

    @staticmethod
    def forward(ctx, a, size: int, alpha: float, beta: float, k: float, columns: int):
        with _full_precision(a.device):
            w, wt, bias = _window_weights(a.shape[1], size, columns, alpha, k, a.device, a.dtype)
            d = F.conv2d(a * a, w, bias)
            scale = d.pow(-beta)
        ctx.save_for_backward(a, d, scale, wt)
        ctx.beta = beta
        return a * scale

    @staticmethod
    def backward(ctx, grad):
        a, d, scale, wt = ctx.saved_tensors
        with _full_precision(a.device):
            g_scaled = grad * scale  # g_i d_i^-β
            t = (g_scaled * a).div_(d)  # g_j a_j d_j^(-β-1)
            window = F.conv2d(t, wt)  # α Σ_{j: i in window(j)} t_j
            out = torch.addcmul(g_scaled, a, window, value=-2.0 * ctx.beta)
        return out, None, None, None, None, None


class LocalResponseNorm(nn.Module):
    """AlexNet §3.3 local response normalisation, with the paper's own constants.

    b^i = a^i / (k + α Σ_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} (a^j)²)^β

    Takes α as the paper writes it. (``nn.LocalResponseNorm`` computes (k + α/n · Σ)^β, so
    there the paper's α = 1e-4 with n = 5 must be passed as 5e-4; tests check both agree.)

    ``columns=2`` normalises each half of the channels on its own, as on AlexNet's two GPUs:
    the columns exchange data only at conv3 and the fc layers (§3.2), so a kernel map on one
    GPU never has neighbours on the other (N = 48 per column, not 96).
    Half/bfloat16 inputs are normalised in float32 and cast back. ``conv`` picks how window
    sums are taken (``_ConvLRN`` or ``_ShiftLRN``); the default, None, lets
    :func:`conv_windows` choose by device, and takes shifted adds under torch.compile, which
    fuses them. On GPUs the 1x1 convolution may run in TF32, as PyTorch lets cuDNN do for the
    model's own float32 convolutions.
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        columns: int = 1,
        conv: bool | None = None,
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.columns = size, alpha, beta, k, columns
        self.conv = conv  # None: conv_windows(device) picks

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        if x.shape[1] % self.columns:
            raise ValueError(f"expected channels divisible by {self.columns}, got {x.shape[1]}")
        low = x.dtype in (torch.float16, torch.bfloat16)
        a = x.float() if low else x
        conv = self.conv
        if conv is None:  # torch.compile fuses the shifted adds; the cached weights break graphs
            conv = conv_windows(a.device) and not torch.compiler.is_compiling()
        function = _ConvLRN if conv else _ShiftLRN
        out = function.apply(a, self.size, self.alpha, self.beta, self.k, self.columns)
        return out.to(x.dtype) if low else out

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha} (paper, not /n), beta={self.beta}, "
            f"k={self.k}, columns={self.columns}"
        )


class LinearAsConv2d(nn.Module):
    """A ``nn.Linear`` applied as a ``kernel_size`` convolution, sharing its parameters.

    OverFeat §3.3: fc layers are convolutions over the feature maps, so a classifier trained
    on fixed-size crops slides over a larger image. The Linear's weight (out, C·k·k) is viewed
    as (out, C, k, k), which matches ``torch.flatten`` of (B, C, k, k) maps; gradients reach
    the Linear's own parameters.
    """

    def __init__(self, linear: nn.Linear, kernel_size: int = 1) -> None:
        super().__init__()
        if linear.in_features % (kernel_size * kernel_size):
            raise ValueError(
                f"expected in_features divisible by {kernel_size}², got {linear.in_features}"
            )
        self.linear = linear
        self.kernel_size = kernel_size

    def weight_as_conv(self) -> torch.Tensor:  # (out, C, k, k), a view of the Linear's weight
        k = self.kernel_size
        w = self.linear.weight
        return w.view(w.shape[0], w.shape[1] // (k * k), k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, out, H-k+1, W-k+1)
        return F.conv2d(x, self.weight_as_conv(), self.linear.bias)

    def to_conv2d(self) -> nn.Conv2d:
        """A standalone ``nn.Conv2d`` holding a copy of the weights."""
        w = self.weight_as_conv()
        conv = nn.Conv2d(
            w.shape[1],
            w.shape[0],
            self.kernel_size,
            bias=self.linear.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(w)
            if conv.bias is not None:
                conv.bias.copy_(self.linear.bias)
        return conv

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
