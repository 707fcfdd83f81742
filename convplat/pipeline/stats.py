"""Training-set statistics from per-task partial sums: the mean image and RGB PCA ("fancy PCA").

Each prepare task adds its images to a :class:`StatsAccumulator`; the driver merges the
partial sums, so no second pass over the images is needed (AlexNet §2 mean image, §4.1 PCA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The RGB covariance is estimated on every second row and column: the 3x3 matrix over
# >16k pixels per image is stable to many digits and this cuts its cost 4x (benchmarks/prepare.py).
COV_STRIDE = 2
# OpenBLAS splits a dot product over threads above 10,000 elements; in a process whose BLAS
# threads are not limited (prepare's driver, running a small job itself) that cost ~90 ms per
# image on a busy 2-core machine. Chunks stay single-threaded. Products of 0..255 integers sum
# exactly in float64 (< 2**53), so the chunking, like the threading, changes no bit.
_DOT_CHUNK = 8192


@dataclass
class StatsAccumulator:
    """Partial sums over uint8 RGB images of one fixed size (0..255 units)."""

    size: int
    count: int = 0
    pixel_sum: np.ndarray = field(default=None)  # (size, size, 3) uint64
    rgb_sum: np.ndarray = field(default=None)  # (3,) float64, over the covariance pixels
    rgb_outer: np.ndarray = field(default=None)  # (3, 3) float64, sum of x x^T
    rgb_pixels: int = 0

    def __post_init__(self) -> None:
        # Whether pixel_sum holds anything (given sums, or a flush of the uint32 accumulator).
        self._flushed = self.pixel_sum is not None
        if self.pixel_sum is None:
            self.pixel_sum = np.zeros((self.size, self.size, 3), np.uint64)
        if self.rgb_sum is None:
            self.rgb_sum = np.zeros(3, np.float64)
        if self.rgb_outer is None:
            self.rgb_outer = np.zeros((3, 3), np.float64)
        self._acc32 = np.zeros((self.size, self.size, 3), np.uint32)
        self._pending = 0

    def add(self, pixels: np.ndarray) -> None:
        """Add one (H, W, 3) uint8 image; its central ``size x size`` window feeds the mean."""
        h, w = pixels.shape[:2]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        window = pixels[top : top + self.size, left : left + self.size]
        np.add(self._acc32, window, out=self._acc32)  # uint32 is exact for 16M images/flush
        self._pending += 1
        if self._pending >= 1 << 24:
            self._flush()
        # (3, N), C-contiguous: strided rows make the sums and dots below several times slower.
        # One channel-first astype of the strided view is ~4x cheaper than reshape (a uint8
        # copy), transpose, then astype.
        sub = pixels[::COV_STRIDE, ::COV_STRIDE].transpose(2, 0, 1)
        planar = sub.astype(np.float64, order="C").reshape(3, -1)
        sums = planar.sum(axis=1)
        outer = np.zeros((3, 3), np.float64)
        n = planar.shape[1]
        for i in range(3):  # six 1-D dot products: far faster than a (3, N) @ (N, 3) gemm here
            for j in range(i, 3):
                for k in range(0, n, _DOT_CHUNK):
                    outer[i, j] += np.dot(
                        planar[i, k : k + _DOT_CHUNK], planar[j, k : k + _DOT_CHUNK]
                    )
                outer[j, i] = outer[i, j]
        self.rgb_sum += sums
        self.rgb_outer += outer
        self.rgb_pixels += planar.shape[1]
        self.count += 1

    def _flush(self) -> None:
        self.pixel_sum += self._acc32
        self._acc32[:] = 0
        self._pending = 0
        self._flushed = True

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The partial sums as plain arrays (for an .npz sidecar or a Ray object).

        ``pixel_sum`` stays uint32 while that is exact (fewer than 2**24 images, always true
        of one shard): every shard writes it to a sidecar and returns it through Ray, and
        half the bytes are a measurable part of a shard task (benchmarks/prepare.py).
        """
        if self._flushed:
            self._flush()
            pixel_sum = self.pixel_sum.copy()
        else:
            pixel_sum = self._acc32.copy()
        return {
            "count": np.array(self.count, np.int64),
            "pixel_sum": pixel_sum,
            "rgb_sum": self.rgb_sum.copy(),
            "rgb_outer": self.rgb_outer.copy(),
            "rgb_pixels": np.array(self.rgb_pixels, np.int64),
        }


def merge_partials(size: int, partials) -> dict[str, np.ndarray]:
    """Sum the partial arrays of several tasks (pixel sums in uint64, whatever each part used).

    ``partials`` may be any iterable; for a running total that takes each task's partial as
    it finishes (and keeps none of them), start from ``merge_partials(size, [])`` and
    :func:`add_partial` to it.
    """
    total = StatsAccumulator(size).to_arrays()
    total["pixel_sum"] = total["pixel_sum"].astype(np.uint64)
    for part in partials:
        add_partial(total, part)
    return total


def add_partial(total: dict[str, np.ndarray], part: dict[str, np.ndarray]) -> None:
    """Fold one task's partial sums into ``total`` (in place; the same arithmetic as before)."""
    for name in total:
        total[name] = total[name] + part[name]


def finalize(total: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mean image, RGB mean and the eigen-decomposition of the RGB covariance.

    Returns arrays in 0..255 units: ``mean`` (size, size, 3) float32, ``rgb_mean`` (3,),
    ``eigval`` (3,) descending and ``eigvec`` (3, 3) whose *columns* are the eigenvectors
    (AlexNet §4.1: add ``eigvec @ (alpha * eigval)`` to every pixel).
    """
    count = int(total["count"])
    if count == 0:
        raise ValueError("no training images to compute statistics from")
    mean = (total["pixel_sum"].astype(np.float64) / count).astype(np.float32)
    n = float(total["rgb_pixels"])
    rgb_mean = total["rgb_sum"] / n
    cov = total["rgb_outer"] / n - np.outer(rgb_mean, rgb_mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    # A deterministic sign per eigenvector (eigh's sign is arbitrary): largest component positive.
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(3)])
    eigvec = eigvec * np.where(signs == 0, 1.0, signs)
    return {
        "mean": mean,
        "rgb_mean": rgb_mean.astype(np.float32),
        "eigval": np.clip(eigval, 0.0, None).astype(np.float32),
        "eigvec": eigvec.astype(np.float32),
        "count": np.array(count, np.int64),
    }
