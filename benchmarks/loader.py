"""Benchmark the training input pipeline against two baselines, all measured in this run.

Each path delivers augmented float32 batches (64, 3, 224, 224) with labels:
(a) torchvision ImageFolder + RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize
    over the raw ~500x375 JPEGs, torch DataLoader
(b) plain webdataset over the same 256x256 shards: .decode("torchrgb") + torchvision
    RandomCrop(224), RandomHorizontalFlip, Normalize per sample, .batched(64), WebLoader
(v2) torchvision's own fast path over the same shards: ``torchvision.io.decode_jpeg`` + v2
    RandomCrop(224) + RandomHorizontalFlip on uint8 tensors per sample, batched as uint8 in
    the workers, then one batched float normalise in the main process
(c) convplat as the trainer called it before the fast path: a new train_loader per epoch
    (fresh loader processes every epoch) + BatchTransform allocating a new float batch per step
(c+) the fast path: one TrainLoader for all epochs (loader processes kept across epochs) +
     BatchTransform(reuse_output=True): no fresh 38 MB allocation per step, whose page faults
     cost about as much as the transform itself on this machine
(c+ fresh) (c+) with ``reuse_buffers=False``: each batch a loader process sends is a new
     shared-memory segment (created, zero-filled, mapped) instead of one of its reused buffers
     (the same with 0 workers: no shared memory then)
(c') the uint8 batches of (c+) alone, i.e. what a GPU run moves to the device
Both (c) rows include the loader changes that have no switch (each worker stops at its share
of the epoch, so no prefetched batch is decoded and dropped; the shuffle buffer yields after
one batch instead of filling first): they are in the code both rows run.

Usage: python benchmarks/loader.py [--images 600] [--epochs 4] [--repeat 3] [--workers 0 1]
Images are generated (photo-like, q90) under benchmarks/_work/loader/ and reused; no network.
Rates count delivered images over wall time, loader start-up of every epoch included; each
figure is the median of --repeat runs, paths interleaved. torch uses 1 thread per process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "loader"
BATCH = 64
CROP = 224
CLASSES = 10
SHARD_SIZE = 100
# ImageNet RGB mean/std in [0, 1] units, as torchvision's reference recipe normalises.
NORM_MEAN, NORM_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Photo-like content: a few octaves of smooth colour noise plus edges, uint8 (H, W, 3)."""
    image = torch.zeros(1, 3, height, width)
    for octave in range(1, 7):
        cells = 2**octave
        field = torch.from_numpy(rng.normal(0, 1, (1, 3, cells, cells)).astype(np.float32))
        image += F.interpolate(field, size=(height, width), mode="bicubic") * (60 / octave)
    edges = (torch.arange(width) // rng.integers(40, 120)) % 2 * rng.uniform(10, 40)
    image += edges.float() + float(rng.uniform(90, 160))
    return image.clamp(0, 255).byte()[0].permute(1, 2, 0).numpy()


def make_data(count: int) -> tuple[Path, Path]:
    """The raw ImageFolder tree (~500x375 q90) and 256x256 q90 shards of the same images."""
    raw, shards = WORK / f"raw-{count}", WORK / f"shards-{count}"
    if (raw / "done").exists() and (shards / "manifest.json").exists():
        return raw, shards
    from convplat.pipeline.image import process_image
    from convplat.pipeline.stats import StatsAccumulator, finalize

    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(shards, ignore_errors=True)
    shards.mkdir(parents=True)
    rng = np.random.default_rng(0)
    stats = StatsAccumulator(256)
    infos, sink, order = [], None, rng.permutation(count)
    for n, i in enumerate(order):
        width, height = (500, 375) if rng.random() < 0.7 else (375, 500)
        label = int(i) % CLASSES
        path = raw / "train" / f"n{label:08d}" / f"img_{i:05d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(photo(rng, width, height)).save(buffer, "JPEG", quality=90)
        path.write_bytes(buffer.getvalue())
        sample = process_image(buffer.getvalue(), 256, 90, True)
        stats.add(sample.pixels)
        if n % SHARD_SIZE == 0:
            if sink is not None:
                sink.close()
            infos.append({"name": f"train-{len(infos):06d}.tar", "count": 0})
            # as `convplat prepare` writes them: integer mtime, so no per-file PAX headers
            sink = wds.TarWriter(str(shards / infos[-1]["name"]), mtime=0)
        sink.write({"__key__": f"img_{i:05d}", "jpg": sample.jpeg, "cls": str(label).encode()})
        infos[-1]["count"] += 1
    sink.close()
    np.savez(shards / "stats.npz", **finalize(stats.to_arrays()))
    manifest = {"size": 256, "crop": True, "splits": {"train": {"count": count, "shards": infos}}}
    (shards / "manifest.json").write_text(json.dumps(manifest))
    (raw / "done").write_text("ok")
    return raw, shards


def run_imagefolder(raw: Path, shards: Path, workers: int, epochs: int) -> int:
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(CROP),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(NORM_MEAN, NORM_STD),
        ]
    )
    dataset = datasets.ImageFolder(str(raw / "train"), transform)
    images = 0
    for _ in range(epochs):
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True
        )
        for x, y in loader:
            images += _check(x, y)
    return images


def run_plain_webdataset(raw: Path, shards: Path, workers: int, epochs: int) -> int:
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomCrop(CROP),
            transforms.RandomHorizontalFlip(),
            transforms.Normalize(NORM_MEAN, NORM_STD),
        ]
    )
    urls = sorted(str(p) for p in shards.glob("train-*.tar"))
    images = 0
    for _ in range(epochs):
        dataset = (
            wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, empty_check=False)
            .shuffle(1000)
            .decode("torchrgb")
            .to_tuple("jpg", "cls")
            .map_tuple(transform, lambda c: int(c))
            .batched(BATCH, partial=False)
        )
        for x, y in wds.WebLoader(dataset, batch_size=None, num_workers=workers):
            images += _check(x, y)
    return images


def run_torchvision_v2(raw: Path, shards: Path, workers: int, epochs: int) -> int:
    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2

    crop_flip = v2.Compose([v2.RandomCrop(CROP), v2.RandomHorizontalFlip()])
    mean = torch.tensor(NORM_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(NORM_STD).view(1, 3, 1, 1) * 255

    def sample(jpeg: bytes) -> torch.Tensor:
        data = torch.frombuffer(bytearray(jpeg), dtype=torch.uint8)
        return crop_flip(decode_jpeg(data))  # uint8 (3, 224, 224)

    def collate(samples):
        return torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples])

    urls = sorted(str(p) for p in shards.glob("train-*.tar"))
    images = 0
    for _ in range(epochs):
        dataset = (
            wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, empty_check=False)
            .shuffle(1000)
            .to_tuple("jpg", "cls")
            .map_tuple(sample, lambda c: int(c))
            .batched(BATCH, collation_fn=collate, partial=False)
        )
        for x, y in wds.WebLoader(dataset, batch_size=None, num_workers=workers):
            images += _check(x.float().sub_(mean).div_(std), y)  # batched normalise
    return images


def run_convplat(
    raw: Path, shards: Path, workers: int, epochs: int, floats: str | None = "fresh"
) -> int:
    """(c): a new loader per epoch and a new float batch per step."""
    from convplat.pipeline.shardset import load_stats
    from convplat.training.augment import BatchTransform
    from convplat.training.data import train_loader

    transform = BatchTransform.from_stats(load_stats(shards))
    generator = torch.Generator().manual_seed(0)
    images = 0
    for epoch in range(epochs):
        loader = train_loader(
            shards, batch_size=BATCH, epoch=epoch, num_workers=workers, crop_size=CROP
        )
        for batch, labels, windows in loader:
            images += _check(transform(batch, windows, generator), labels)
    return images


def run_convplat_fast(
    raw: Path,
    shards: Path,
    workers: int,
    epochs: int,
    floats: bool = True,
    reuse_buffers: bool = True,
) -> int:
    """(c+): one TrainLoader for every epoch, one reused float batch, reused shared-memory
    batch buffers in the loader processes."""
    from convplat.pipeline.shardset import load_stats
    from convplat.training.augment import BatchTransform
    from convplat.training.data import TrainLoader

    transform = BatchTransform.from_stats(load_stats(shards), reuse_output=True)
    generator = torch.Generator().manual_seed(0)
    loader = TrainLoader(
        shards, batch_size=BATCH, num_workers=workers, crop_size=CROP, reuse_buffers=reuse_buffers
    )
    images = 0
    for epoch in range(epochs):
        for batch, labels, windows in loader.epoch(epoch):
            if floats:
                images += _check(transform(batch, windows, generator), labels)
            else:
                images += len(labels)
    return images


def run_convplat_uint8(raw: Path, shards: Path, workers: int, epochs: int) -> int:
    return run_convplat_fast(raw, shards, workers, epochs, floats=False)


def run_convplat_fresh_segments(raw: Path, shards: Path, workers: int, epochs: int) -> int:
    return run_convplat_fast(raw, shards, workers, epochs, reuse_buffers=False)


def _check(x: torch.Tensor, y: torch.Tensor) -> int:
    assert x.shape == (BATCH, 3, CROP, CROP) and x.dtype == torch.float32, (x.shape, x.dtype)
    return len(y)


PATHS = {
    "(a) ImageFolder + torchvision transforms (raw JPEGs)": run_imagefolder,
    "(b) webdataset .decode('torchrgb') + transforms": run_plain_webdataset,
    "(v2) decode_jpeg + v2 uint8 crop/flip + batched normalise": run_torchvision_v2,
    "(c) convplat before: loader per epoch, new float batches": run_convplat,
    "(c+) convplat fast path: TrainLoader + reused output": run_convplat_fast,
    "(c+ fresh) the same, a new shared-memory segment per batch": run_convplat_fresh_segments,
    "(c') convplat fast path, uint8 batches only": run_convplat_uint8,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)

    raw, shards = make_data(args.images)
    print(
        f"{args.images} images: raw ~500x375 q90 in {raw.name}/, 256x256 q90 shards in "
        f"{shards.name}/; batch {BATCH}, {args.epochs} epochs per run, median of {args.repeat}",
        flush=True,
    )
    rates: dict[tuple[str, int], list[float]] = {}
    for workers in args.workers:
        for fn in PATHS.values():
            fn(raw, shards, workers, 1)  # warm the page cache and imports
        for _ in range(args.repeat):
            for name, fn in PATHS.items():
                start = time.perf_counter()
                images = fn(raw, shards, workers, args.epochs)
                rate = images / (time.perf_counter() - start)
                rates.setdefault((name, workers), []).append(rate)

    print("\n| path | workers | images/s | vs (a) | vs (b) |\n|---|---:|---:|---:|---:|")
    met = []
    for workers in args.workers:
        base_a = statistics.median(rates[(next(iter(PATHS)), workers)])
        base_b = statistics.median(rates[(list(PATHS)[1], workers)])
        for name in PATHS:
            rate = statistics.median(rates[(name, workers)])
            print(
                f"| {name} | {workers} | {rate:,.0f} | {rate / base_a:.2f}x | "
                f"{rate / base_b:.2f}x |"
            )
            if name.startswith("(c+)"):
                met.append((workers, rate / base_a, rate / base_b))
    names = list(PATHS)
    for workers in args.workers:
        v2, before, fast, fresh = (
            statistics.median(rates[(names[i], workers)]) for i in (2, 3, 4, 5)
        )
        print(
            f"{workers} workers: fast path (c+) / before (c) {fast / before:.2f}x, "
            f"(c+) / torchvision v2 {fast / v2:.2f}x, "
            f"reused / fresh shared-memory batches {fast / fresh:.2f}x"
        )
    print(
        "targets (c+) >= 3x (a) and >= 1.5x (b): "
        + ", ".join(
            f"{w} workers: {'met' if a >= 3 and b >= 1.5 else 'MISSED'} ({a:.2f}x, {b:.2f}x)"
            for w, a, b in met
        )
    )


if __name__ == "__main__":
    main()
