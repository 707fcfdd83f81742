"""AlexNet's augmentation (§4.1): crop windows chosen per sample on uint8, float work batched.

Per sample only a window is drawn and a uint8 crop copied (``data.py`` does that in the loader
workers). Everything in float - mean-image subtraction aligned with each crop's window, "fancy
PCA" lighting, horizontal flips, scaling, the HWC -> CHW layout - runs batched in
:class:`BatchTransform` on whatever device the batch is on (FIELD-NOTES: per-sample numpy flips
and per-sample float work are traps).

A *window* is ``(top, left, flip)``: the crop's position inside the ``S x S`` frame that the
mean image (``stats.npz``) covers, and whether the crop is to be mirrored left-right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

Window = tuple[int, int, int]

# AlexNet §4.1: "α_i ~ N(0, 0.1)", drawn once per image per presentation.
LIGHTING_STD = 0.1


def random_window(height: int, width: int, size: int, rng: np.random.Generator) -> Window:
    """A uniformly random ``size x size`` window inside ``height x width`` and a fair flip coin."""
    _check_fits(height, width, size)
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return top, left, int(rng.integers(0, 2))


def random_windows(
    count: int, height: int, width: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` random windows at once, as an int64 array ``(count, 3)`` of [top, left, flip].

    Same distribution as :func:`random_window`, one vectorised draw per batch.
    """
    _check_fits(height, width, size)
    windows = np.empty((count, 3), np.int64)
    windows[:, 0] = rng.integers(0, height - size + 1, count)
    windows[:, 1] = rng.integers(0, width - size + 1, count)
    windows[:, 2] = rng.integers(0, 2, count)
    return windows


def center_window(height: int, width: int, size: int) -> Window:
    """The central ``size x size`` window (never flipped)."""
    _check_fits(height, width, size)
    return (height - size) // 2, (width - size) // 2, 0


def ten_crop_windows(height: int, width: int, size: int) -> list[Window]:
    """AlexNet §4.1 test time: the four corner and the centre patches, then the same mirrored.

    Order: top-left, top-right, bottom-left, bottom-right, centre, then those five flipped.
    """
    _check_fits(height, width, size)
    bottom, right = height - size, width - size
    top, left, _ = center_window(height, width, size)
    five = [(0, 0), (0, right), (bottom, 0), (bottom, right), (top, left)]
    return [(t, x, 0) for t, x in five] + [(t, x, 1) for t, x in five]


def crop_uint8(image_hwc: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """A ``(size, size, C)`` view of ``image_hwc`` at ``(top, left)`` (no copy, no flip).

    Flipping is left to :class:`BatchTransform`: a negative-stride numpy copy per sample costs
    ~150 µs, a batched flip a fraction of that (FIELD-NOTES).
    """
    height, width = image_hwc.shape[:2]
    if top < 0 or left < 0 or top + size > height or left + size > width:
        raise ValueError(
            f"window ({top}, {left}) of size {size} does not fit a {height}x{width} image"
        )
    return image_hwc[top : top + size, left : left + size]


def _check_fits(height: int, width: int, size: int) -> None:
    if size < 1 or size > height or size > width:
        raise ValueError(f"expected a crop of 1..{min(height, width)} pixels, got {size}")


class BatchTransform(nn.Module):
    """uint8 crops ``(B, h, w, 3)`` + windows ``(B, 3)`` -> float32 ``(B, 3, h, w)`` network input.

    For each image (AlexNet §2 and §4.1), in this order:

    1. subtract the per-pixel mean image over the crop's own window,
       ``x = crop - mean[top:top+h, left:left+w]``;
    2. add "fancy PCA" lighting, the same RGB offset on every pixel of one image:
       ``noise = eigvec @ (alpha * eigval / 255)`` with ``alpha ~ N(0, lighting_std)`` (3 values,
       fresh per image and call). Units: ``eigval`` is the RGB covariance's eigenvalues in 0..255
       units, but the published recipe (AlexNet §4.1; fb.resnet.torch's lambda =
       [0.2175, 0.0188, 0.0045]) applies ``eigvec @ (alpha * lambda)`` to RGB in [0, 1], with
       lambda in [0, 1]^2 units. The same perturbation on 0..255 pixels is
       ``255 * eigvec @ (alpha * lambda_01) = eigvec @ (alpha * eigval_255 / 255)``;
       using eigval_255 directly would be 255x too strong;
    3. mirror left-right where the window's flip flag is 1;
    4. multiply by ``input_scale``.

    Lighting is applied only while the module is in training mode (``.train()``, the default)
    and ``lighting_std > 0``; ``forward(..., lighting=False)`` forces it off (validation).
    The output is channels-first; with ``channels_last=True`` it is in the ``channels_last``
    memory format (the same values, a cheaper layout for the first convolution).
    Works on any device: the buffers follow ``.to(device)``, the batch decides.

    ``reuse_output=True`` writes every batch into one kept output tensor (reallocated only when
    the shape, device or layout changes) instead of a new one per call: a fresh 38 MB batch
    costs about as much in page faults as the transform itself on CPU (benchmarks/loader.py).
    A training step may use it (its input is consumed by ``backward`` before the next batch);
    a caller that keeps outputs across calls must not.
    """

    def __init__(
        self,
        mean: np.ndarray | torch.Tensor,
        eigval: np.ndarray | torch.Tensor,
        eigvec: np.ndarray | torch.Tensor,
        *,
        lighting_std: float = LIGHTING_STD,
        input_scale: float = 1.0,
        channels_last: bool = False,
        gather: str = "auto",
        reuse_output: bool = False,
    ) -> None:
        super().__init__()
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        if mean.ndim != 3 or mean.shape[2] != 3 or mean.shape[0] != mean.shape[1]:
            raise ValueError(f"expected a mean image of shape (S, S, 3), got {tuple(mean.shape)}")
        eigval = torch.as_tensor(np.asarray(eigval), dtype=torch.float32).reshape(3)
        eigvec = torch.as_tensor(np.asarray(eigvec), dtype=torch.float32).reshape(3, 3)
        if lighting_std < 0:
            raise ValueError(f"expected lighting_std >= 0, got {lighting_std}")
        if gather not in ("auto", "batched", "loop"):
            raise ValueError(f"expected gather auto|batched|loop, got {gather!r}")
        self.size = int(mean.shape[0])
        self.lighting_std = float(lighting_std)
        self.input_scale = float(input_scale)
        self.channels_last = bool(channels_last)
        self.gather = gather
        self.reuse_output = bool(reuse_output)
        self._kept: torch.Tensor | None = None  # the reused output (not state: never saved)
        # The mean in both layouts, so each output layout subtracts a same-strided window.
        self.register_buffer("mean_chw", mean.permute(2, 0, 1).contiguous(), persistent=False)
        self.register_buffer("mean_hwc", mean.contiguous(), persistent=False)
        self.register_buffer("eigval", eigval, persistent=False)
        self.register_buffer("eigvec", eigvec, persistent=False)

    @classmethod
    def from_stats(cls, stats: Mapping[str, np.ndarray], **kwargs) -> BatchTransform:
        """Build from the arrays of ``stats.npz`` (``pipeline.shardset.load_stats``)."""
        return cls(stats["mean"], stats["eigval"], stats["eigvec"], **kwargs)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, lighting_std={self.lighting_std}, "
            f"input_scale={self.input_scale}, channels_last={self.channels_last}"
        )

    def lighting_noise(
        self, batch: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """Per-image RGB offsets ``(batch, 3)`` in 0..255 units (see the class docstring)."""
        device = self.eigval.device if device is None else device
        alpha = torch.randn((batch, 3), generator=generator, device=device) * self.lighting_std
        # noise[b] = eigvec @ (alpha[b] * eigval / 255), for all b at once.
        return (alpha * (self.eigval.to(device) / 255.0)) @ self.eigvec.to(device).T

    def forward(
        self,
        images: torch.Tensor,
        windows: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        lighting: bool | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Transform one batch.

        Args:
            images: uint8 ``(B, h, w, 3)`` crops (HWC, as the loaders yield them).
            windows: int ``(B, 3)`` rows ``[top, left, flip]`` of each crop in the mean frame.
            generator: a ``torch.Generator`` on the batch's device for the lighting noise
                (None: torch's global generator).
            lighting: force lighting on/off; None follows ``self.training``.
            out: optional preallocated float32 ``(B, 3, h, w)`` result on the batch's device.
                Reusing one avoids a fresh large allocation per batch on CPU, but the caller
                must then not keep the previous result alive (autograd saves the input of the
                first layer until ``backward``).

        Returns:
            float32 ``(B, 3, h, w)``.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(
                f"expected uint8 images of shape (B, h, w, 3), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        batch, height, width, _ = images.shape
        if windows.shape != (batch, 3):
            raise ValueError(f"expected windows of shape ({batch}, 3), got {tuple(windows.shape)}")
        if height > self.size or width > self.size:
            raise ValueError(
                f"crops of {height}x{width} do not fit the {self.size}x{self.size} mean image"
            )
        device = images.device
        if self.mean_chw.device != device:
            raise ValueError(
                f"the transform is on {self.mean_chw.device} but the batch on {device}: "
                "call transform.to(device) once"
            )
        if windows.device.type == "cpu":  # cheap here; on an accelerator it would force a sync
            self._check_windows(windows, height, width)
        windows = windows.to(device=device, dtype=torch.int64)
        if out is None and self.reuse_output:
            out = self._reusable((batch, 3, height, width), device)
        if out is None:
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            out = torch.empty(
                (batch, 3, height, width), dtype=torch.float32, device=device, memory_format=fmt
            )
        elif (
            out.shape != (batch, 3, height, width)
            or out.dtype != torch.float32
            or out.device != device
        ):
            raise ValueError(
                f"expected out float32 {(batch, 3, height, width)} on {device}, got "
                f"{out.dtype} {tuple(out.shape)} on {out.device}"
            )
        if batch == 0:
            return out
        out.copy_(images.permute(0, 3, 1, 2))  # uint8 HWC -> float32, the layout of `out`

        # 1. Mean-image subtraction over each crop's own window.
        mean = self.mean_hwc.permute(2, 0, 1) if _is_channels_last(out) else self.mean_chw
        gather = self.gather
        if gather == "auto":
            # On CPU, B strided slice operations beat one advanced-indexing gather ~5x
            # (measured for benchmarks/loader.py); on accelerators batched ops are one kernel.
            gather = "loop" if device.type == "cpu" else "batched"
        if gather == "loop":
            for b, (top, left) in enumerate(windows[:, :2].tolist()):
                out[b].sub_(mean[:, top : top + height, left : left + width])
        else:
            out.sub_(_mean_windows(mean, windows, height, width))

        # 2. + 4. Lighting and scale in one pass: out = s * out + s * noise.
        use_lighting = self.training if lighting is None else lighting
        if use_lighting and self.lighting_std > 0:
            noise = self.lighting_noise(batch, generator, device) * self.input_scale
            torch.add(noise.view(batch, 3, 1, 1), out, alpha=self.input_scale, out=out)
        elif self.input_scale != 1.0:
            out.mul_(self.input_scale)

        # 3. Mirror the flagged images (the lighting offset is constant per image, so the
        #    order against step 2 does not matter).
        flips = windows[:, 2].bool()
        if gather == "loop":
            for b in torch.nonzero(flips).flatten().tolist():
                out[b] = out[b].flip(-1)
        else:
            out.copy_(torch.where(flips.view(batch, 1, 1, 1), out.flip(-1), out))
        return out

    def _reusable(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The kept output when it fits this batch, else a new one (kept from now on)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        kept = self._kept
        if (
            kept is None
            or kept.shape != shape
            or kept.device != device
            or not kept.is_contiguous(memory_format=fmt)
        ):
            kept = torch.empty(shape, dtype=torch.float32, device=device, memory_format=fmt)
            self._kept = kept
        return kept

    def _check_windows(self, windows: torch.Tensor, height: int, width: int) -> None:
        tops, lefts, flips = windows[:, 0], windows[:, 1], windows[:, 2]
        bad = (
            (tops < 0)
            | (lefts < 0)
            | (tops + height > self.size)
            | (lefts + width > self.size)
            | (flips < 0)
            | (flips > 1)
        )
        if bool(bad.any()):
            row = windows[int(torch.nonzero(bad)[0, 0])].tolist()
            raise ValueError(
                f"window {row} of a {height}x{width} crop falls outside the "
                f"{self.size}x{self.size} mean image (or flip is not 0/1)"
            )


def _is_channels_last(tensor: torch.Tensor) -> bool:
    return tensor.stride(1) == 1 and tensor.shape[1] > 1


def _mean_windows(mean: torch.Tensor, windows: torch.Tensor, height: int, width: int):
    """Every image's mean window ``(B, 3, h, w)`` in one gather, no copy of the mean image.

    ``as_strided`` views the (3, S, S) mean as all (S-h+1) x (S-w+1) windows at once; indexing
    that view with the B (top, left) pairs materialises only the B windows asked for.
    """
    c_stride, y_stride, x_stride = mean.stride()
    size_y, size_x = mean.shape[1], mean.shape[2]
    every = mean.as_strided(
        (size_y - height + 1, size_x - width + 1, 3, height, width),
        (y_stride, x_stride, c_stride, y_stride, x_stride),
    )
    return every[windows[:, 0], windows[:, 1]]


class TenCrop(nn.Module):
    """Full ``(B, S', S', 3)`` uint8 frames -> ``(B * 10, 3, size, size)`` float network input.

    The ten AlexNet test patches of :func:`ten_crop_windows` per image, image-major (rows
    ``10 b .. 10 b + 9`` belong to image ``b``), each mean-subtracted over its own window and
    mirrored where flagged, never lit. Average the softmax outputs with :func:`average_ten_crop`.
    """

    def __init__(self, transform: BatchTransform, size: int) -> None:
        super().__init__()
        self.transform = transform
        self.size = int(size)

    def forward(self, images: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """``frames``: optional ``(B, 3)`` windows of the given images inside the mean frame
        (as the eval loader yields them; zeros when the images are the whole ``S x S`` frame)."""
        batch, height, width, _ = images.shape
        windows = ten_crop_windows(height, width, self.size)
        size = self.size
        crops = torch.stack(  # (B, 10, size, size, 3): one uint8 copy, flips come later
            [images[:, top : top + size, left : left + size] for top, left, _ in windows], dim=1
        ).reshape(batch * len(windows), size, size, 3)
        table = torch.tensor(windows, dtype=torch.int64, device=images.device)
        all_windows = table.repeat(batch, 1)  # (B * 10, 3), image-major
        if frames is not None:
            offsets = frames.to(device=images.device, dtype=torch.int64).clone()
            offsets[:, 2] = 0
            all_windows = all_windows + offsets.repeat_interleave(len(windows), dim=0)
        return self.transform(crops, all_windows, lighting=False)


def average_ten_crop(logits: torch.Tensor, crops: int = 10) -> torch.Tensor:
    """Mean softmax over each image's ``crops`` consecutive rows: ``(B * crops, C) -> (B, C)``."""
    return logits.view(-1, crops, logits.shape[-1]).softmax(dim=-1).mean(dim=1)


def windows_tensor(windows: Sequence[Window]) -> torch.Tensor:
    """A list of windows as the int64 ``(B, 3)`` tensor the transforms take."""
    return torch.tensor(list(windows), dtype=torch.int64).reshape(-1, 3)
