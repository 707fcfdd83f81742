"""Crop windows, the batched float transform (mean, fancy PCA, flips) and ten-crop evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convplat.training.augment import (
    BatchTransform,
    TenCrop,
    average_ten_crop,
    center_window,
    crop_uint8,
    random_window,
    random_windows,
    ten_crop_windows,
    windows_tensor,
)

S = 12  # frame (mean image) size in these tests


def arange_mean(size: int = S) -> np.ndarray:
    """A mean image whose every value differs, so a misaligned window cannot go unnoticed."""
    return np.arange(size * size * 3, dtype=np.float32).reshape(size, size, 3)


def transform(mean=None, eigval=(3.0, 2.0, 1.0), eigvec=None, **kwargs) -> BatchTransform:
    mean = arange_mean() if mean is None else mean
    eigvec = np.eye(3, dtype=np.float32) if eigvec is None else eigvec
    return BatchTransform(mean, np.asarray(eigval, np.float32), eigvec, **kwargs)


def expected(frames: np.ndarray, windows, size: int, mean: np.ndarray, scale: float = 1.0):
    """The reference: crop, subtract the mean over the same window, flip, scale, CHW."""
    out = []
    for frame, (top, left, flip) in zip(frames, windows, strict=True):
        x = frame[top : top + size, left : left + size].astype(np.float32)
        x = x - mean[top : top + size, left : left + size]
        if flip:
            x = x[:, ::-1]
        out.append(x.transpose(2, 0, 1) * scale)
    return torch.from_numpy(np.stack(out))


def random_batch(count: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (count, S, S, 3), dtype=np.uint8)
    windows = random_windows(count, S, S, size, rng)
    windows[: count // 2, 2] = [0, 1] * (count // 4) + [0] * (count // 2 % 2)  # both flips
    crops = np.stack(
        [crop_uint8(f, t, x, size) for f, (t, x, _) in zip(frames, windows, strict=True)]
    )
    return frames, torch.from_numpy(crops), torch.from_numpy(windows)


# --------------------------------------------------------------------------- windows
def test_random_window_stays_inside_and_covers_every_position_uniformly():
    rng = np.random.default_rng(0)
    draws = np.array([random_window(10, 13, 7, rng) for _ in range(6000)])
    batched = random_windows(60000, 10, 13, 7, rng)
    for windows in (draws, batched):
        tops, lefts, flips = windows.T
        assert tops.min() == 0 and tops.max() == 3
        assert lefts.min() == 0 and lefts.max() == 6
        assert set(flips.tolist()) == {0, 1}
        n = len(windows)
        assert np.allclose(np.bincount(tops) / n, 1 / 4, atol=0.03)
        assert np.allclose(np.bincount(lefts) / n, 1 / 7, atol=0.03)
        assert abs(flips.mean() - 0.5) < 0.03
    assert batched.dtype == np.int64 and batched.shape == (60000, 3)


def test_window_helpers_are_exact_on_a_tiny_case():
    assert center_window(5, 6, 3) == (1, 1, 0)
    assert center_window(8, 8, 8) == (0, 0, 0)
    five = [(0, 0), (0, 3), (2, 0), (2, 3), (1, 1)]
    assert ten_crop_windows(5, 6, 3) == [(t, x, 0) for t, x in five] + [(t, x, 1) for t, x in five]
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    view = crop_uint8(image, 2, 3, 3)
    assert np.shares_memory(view, image) and np.array_equal(view, image[2:5, 3:6])
    with pytest.raises(ValueError):
        crop_uint8(image, 3, 0, 3)
    with pytest.raises(ValueError):
        random_window(5, 6, 7, np.random.default_rng(0))


# --------------------------------------------------------------------------- mean and flips
@pytest.mark.parametrize("gather", ["loop", "batched"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_mean_window_follows_the_crop_window_and_flips_follow_the_flag(gather, channels_last):
    size, mean = 7, arange_mean()
    frames, crops, windows = random_batch(16, size)
    module = transform(mean, lighting_std=0.0, gather=gather, channels_last=channels_last)
    out = module(crops, windows)
    assert out.shape == (16, 3, size, size) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(out, expected(frames, windows.tolist(), size, mean))
    # flipped crop == flip(crop - mean window), checked directly on one flipped image
    b = int(torch.nonzero(windows[:, 2])[0, 0])
    unflipped = windows.clone()
    unflipped[:, 2] = 0
    assert torch.equal(out[b], module(crops, unflipped)[b].flip(-1))


def test_input_scale_and_validation_mode():
    size, mean = 5, arange_mean()
    frames, crops, windows = random_batch(6, size, seed=1)
    module = transform(mean, input_scale=0.5).eval()  # eval: no lighting
    assert torch.equal(module(crops, windows), expected(frames, windows.tolist(), size, mean, 0.5))
    reused = torch.empty(6, 3, size, size)
    assert module(crops, windows, out=reused) is reused


def test_bad_inputs_are_refused():
    module = transform()
    crops = torch.zeros(2, 5, 5, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="outside"):
        module(crops, torch.tensor([[0, 0, 0], [8, 0, 0]]))
    with pytest.raises(ValueError, match="uint8"):
        module(crops.float(), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="mean image"):
        BatchTransform(np.zeros((4, 5, 3)), np.ones(3), np.eye(3))


# --------------------------------------------------------------------------- fancy PCA
def test_lighting_offsets_are_constant_per_image_with_the_documented_std():
    count, size = 4000, 3
    eigval = np.array([5100.0, 2550.0, 1275.0], np.float32)  # / 255 -> 20, 10, 5
    module = transform(np.zeros((S, S, 3), np.float32), eigval=eigval, lighting_std=0.1)
    crops = torch.zeros(count, size, size, 3, dtype=torch.uint8)
    windows = torch.zeros(count, 3, dtype=torch.int64)
    out = module(crops, windows, torch.Generator().manual_seed(0))
    per_image = out[:, :, 0, 0]  # (count, 3)
    assert torch.equal(out, per_image[:, :, None, None].expand_as(out))  # same on every pixel
    std = per_image.std(dim=0).numpy()
    assert np.allclose(std, 0.1 * eigval / 255, rtol=0.06)  # noise = eigvec @ (α · λ / 255)
    assert np.allclose(per_image.mean(dim=0).numpy(), 0, atol=0.1)


def test_lighting_noise_follows_the_eigenvectors():
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    eigval = np.array([2550.0, 1275.0, 255.0], np.float32)
    module = transform(eigval=eigval, eigvec=rotation.astype(np.float32), lighting_std=0.1)
    noise = module.lighting_noise(20000, torch.Generator().manual_seed(1)).double().numpy()
    cov = np.cov(noise.T)
    want = rotation @ np.diag((0.1 * eigval / 255) ** 2) @ rotation.T
    assert np.allclose(cov, want, atol=0.03 * want.max())


def test_no_lighting_when_disabled():
    frames, crops, windows = random_batch(8, 6, seed=2)
    plain = transform(lighting_std=0.0)(crops, windows)
    assert torch.equal(plain, expected(frames, windows.tolist(), 6, arange_mean()))
    lit = transform(lighting_std=0.1)
    assert torch.equal(lit(crops, windows, lighting=False), plain)
    assert torch.equal(lit.eval()(crops, windows), plain)
    assert not torch.equal(lit.train()(crops, windows), plain)


# --------------------------------------------------------------------------- ten-crop
def test_ten_crop_matches_a_direct_computation():
    size, mean = 7, arange_mean()
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (3, S, S, 3), dtype=np.uint8)
    module = TenCrop(transform(mean, lighting_std=0.1), size)
    out = module(torch.from_numpy(frames))
    assert out.shape == (30, 3, size, size)
    windows = ten_crop_windows(S, S, size)
    want = expected(np.repeat(frames, 10, axis=0), windows * 3, size, mean)
    assert torch.equal(out, want)  # no lighting at test time, flips applied

    logits = torch.randn(30, 5)
    probs = average_ten_crop(logits)
    assert probs.shape == (3, 5)
    assert torch.allclose(probs[1], logits[10:20].softmax(-1).mean(0))
    assert windows_tensor(windows).shape == (10, 3)


def test_ten_crop_of_frames_placed_inside_the_mean_image():
    size, mean = 5, arange_mean()
    rng = np.random.default_rng(5)
    big = rng.integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    inner = big[:, 2:10, 1:9]  # 8x8 frames at (2, 1) of the mean image
    frames = torch.tensor([[2, 1, 0], [2, 1, 0]])
    out = TenCrop(transform(mean), size)(torch.from_numpy(np.ascontiguousarray(inner)), frames)
    windows = [(t + 2, x + 1, f) for t, x, f in ten_crop_windows(8, 8, size)]
    assert torch.equal(out, expected(np.repeat(big, 10, axis=0), windows * 2, size, mean))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_device_path_matches_cpu_loop_reference(device):
    """The transform on each available device (CUDA where present) equals the CPU loop path."""
    frames, crops, windows = random_batch(32, 7, seed=6)
    reference = transform(lighting_std=0.0, input_scale=0.25, channels_last=True, gather="loop")
    want = reference(crops, windows)
    module = transform(lighting_std=0.0, input_scale=0.25, channels_last=True).to(device)
    got = module(crops.to(device), windows.to(device))
    assert got.device.type == device and torch.equal(got.cpu(), want)
    gen = torch.Generator(device).manual_seed(0)
    lit_module = transform(lighting_std=0.1, input_scale=0.25, channels_last=True).to(device)
    lit = lit_module(crops.to(device), windows.to(device), gen).cpu()
    offsets = (lit - want).mean(dim=(2, 3))  # lighting: one RGB offset per image
    assert torch.allclose(lit - want, offsets[:, :, None, None], atol=1e-4)
    assert offsets.abs().max() > 0


def test_a_reused_output_holds_the_same_values_as_a_fresh_one():
    rng = np.random.default_rng(0)
    mean = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    fresh = BatchTransform(mean, np.ones(3), np.eye(3), lighting_std=0.0, input_scale=0.5)
    reused = BatchTransform(
        mean, np.ones(3), np.eye(3), lighting_std=0.0, input_scale=0.5, reuse_output=True
    )
    outputs = []
    for seed in (1, 2):
        images = torch.from_numpy(rng.integers(0, 256, (3, 6, 6, 3), dtype=np.uint8))
        windows = torch.tensor([[0, 0, 0], [2, 1, 1], [1, 2, 0]])
        got = reused(images, windows)
        assert torch.equal(got, fresh(images, windows)), seed
        outputs.append(got.data_ptr())
    assert outputs[0] == outputs[1]  # one buffer for both batches
    smaller = reused(
        torch.zeros((1, 6, 6, 3), dtype=torch.uint8), torch.zeros((1, 3), dtype=torch.int64)
    )
    assert smaller.shape == (1, 3, 6, 6)  # a batch of another size gets its own
