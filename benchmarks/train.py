"""Ray Train overhead: `convplat train` with 1 CPU worker vs a plain single-process loop.

Both use the same model, shards, loader (convplat.training.data.train_loader), batch transform
and batch size; the plain loop is a hand-written PyTorch loop in this process. images/s is
measured over the same number of optimizer steps (the epoch's own timing in both cases:
Ray start-up and worker creation are reported separately, not counted).

Usage: python benchmarks/train.py [--model alexnet] [--batch 32] [--steps 8] [--threads 2]
Data: the demo set (generated and prepared under benchmarks/_work/train/ if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work" / "train"


def ensure_shards() -> Path:
    shards = WORK / "shards"
    if (shards / "manifest.json").is_file():
        return shards
    from convplat.cluster import ensure_ray
    from convplat.config import PrepareConfig
    from convplat.demo import make_demo_data
    from convplat.pipeline import prepare

    make_demo_data(out=WORK / "data", classes=10, seed=0)
    ensure_ray()
    prepare(
        PrepareConfig(
            source=str(WORK / "data" / "imagenet"), out=str(shards), shard_size=100, progress=False
        )
    )
    import ray

    ray.shutdown()
    return shards


def plain_loop(shards: Path, model_name: str, batch: int, steps: int, threads: int) -> float:
    """A hand-written single-process loop: same loader, transform, model and optimizer."""
    import torch
    import torch.nn.functional as F

    from convplat.pipeline.shardset import load_stats, read_manifest
    from convplat.training.augment import BatchTransform
    from convplat.training.data import train_loader
    from convplat.training.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    classes = len(read_manifest(shards)["classes"])
    model = create_model(model_name, num_classes=classes).train()
    transform = BatchTransform.from_stats(load_stats(shards), input_scale=1 / 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loader = train_loader(
        str(shards), batch_size=batch, epoch=1, num_workers=0, crop_size=model.input_size
    )
    images = 0
    start = time.perf_counter()
    for step, (crops, labels, windows) in enumerate(loader):
        if step == steps:
            break
        inputs = transform(crops, windows)
        loss = F.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += labels.shape[0]
    return images / (time.perf_counter() - start)


def ray_train(
    shards: Path, model_name: str, batch: int, steps: int, threads: int
) -> tuple[float, float]:
    import ray

    from convplat.cluster import ensure_ray
    from convplat.config import TrainConfig
    from convplat.training import fit

    out = WORK / "runs"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    ensure_ray(num_cpus=threads)
    config = TrainConfig(
        model=model_name,
        data=str(shards),
        out=str(out),
        epochs=1,
        batch_size=batch,
        workers=1,
        cpus_per_worker=threads,
        loader_workers=0,
        limit_train_batches=steps,
        limit_val_batches=1,
        input_scale=1 / 64,
        progress=False,
        run_name="bench",
    )
    run = Path(fit(config))
    total = time.perf_counter() - started
    ray.shutdown()
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    return metrics["images_per_s"], total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    shards = ensure_shards()
    # Plain loop before and after the Ray run, best of the two: the machine is shared and noisy.
    plain = plain_loop(shards, args.model, args.batch, args.steps, args.threads)
    ray_rate, wall = ray_train(shards, args.model, args.batch, args.steps, args.threads)
    plain = max(plain, plain_loop(shards, args.model, args.batch, args.steps, args.threads))
    print(f"\n{args.model}, batch {args.batch}, {args.steps} steps, {args.threads} threads\n")
    print("| loop | images/s | vs plain |\n|---|---:|---:|")
    print(f"| plain single-process PyTorch loop | {plain:.1f} | 1.00x |")
    print(f"| convplat train, Ray Train, 1 CPU worker | {ray_rate:.1f} | {ray_rate / plain:.2f}x |")
    print(f"\nRay start + TorchTrainer set-up + the run: {wall:.1f} s wall in total.")
    print(f"target (>= 0.9x): {'met' if ray_rate / plain >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
