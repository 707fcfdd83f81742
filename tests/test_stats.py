"""Statistics from partial sums equal numpy computed directly on the same pixels."""

from __future__ import annotations

import numpy as np
from conftest import photo

from convplat.pipeline.stats import COV_STRIDE, StatsAccumulator, finalize, merge_partials


def test_partial_sums_reduce_to_numpy_statistics():
    images = [photo(32, 32, seed=s) for s in range(7)]
    images[3] = photo(40, 32, seed=3)  # a --no-crop image: its centre 32x32 feeds the mean
    first, second = StatsAccumulator(32), StatsAccumulator(32)
    for i, image in enumerate(images):
        (first if i < 4 else second).add(image)
    result = finalize(merge_partials(32, [first.to_arrays(), second.to_arrays()]))

    windows = np.stack([im[:, (im.shape[1] - 32) // 2 :][:, :32] for im in images])
    np.testing.assert_allclose(result["mean"], windows.mean(axis=0), rtol=1e-6)
    pixels = np.concatenate(
        [im[::COV_STRIDE, ::COV_STRIDE].reshape(-1, 3) for im in images]
    ).astype(np.float64)
    np.testing.assert_allclose(result["rgb_mean"], pixels.mean(axis=0), rtol=1e-6)
    cov = np.cov(pixels, rowvar=False, bias=True)
    eigval, eigvec = result["eigval"], result["eigvec"]
    np.testing.assert_allclose(eigvec @ np.diag(eigval) @ eigvec.T, cov, rtol=1e-4, atol=1e-2)
    assert eigval[0] >= eigval[1] >= eigval[2] >= 0
    np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-5)
    assert int(result["count"]) == 7


def test_shard_partials_are_uint32_and_merge_without_overflow():
    acc = StatsAccumulator(4)
    acc.add(np.full((4, 4, 3), 255, np.uint8))
    part = acc.to_arrays()
    assert part["pixel_sum"].dtype == np.uint32  # half the sidecar bytes while exact
    big = dict(part, pixel_sum=np.full((4, 4, 3), 2**31, np.uint32))
    total = merge_partials(4, [big] * 4 + [part])
    assert total["pixel_sum"].dtype == np.uint64
    assert int(total["pixel_sum"][0, 0, 0]) == 4 * 2**31 + 255

    acc._flush()  # a flushed accumulator (2**24 images) reports its exact uint64 sums
    flushed = acc.to_arrays()
    assert flushed["pixel_sum"].dtype == np.uint64
    assert int(flushed["pixel_sum"][0, 0, 0]) == 255
