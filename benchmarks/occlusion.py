"""Occlusion sensitivity (ZFNet §4.2): one forward pass per position vs batched full passes vs
batched incremental passes (each conv layer recomputed only where the square reaches).

    python benchmarks/occlusion.py                       # alexnet, 224, 32x32 square, stride 8
    python benchmarks/occlusion.py --model zfnet --repeats 5

Random weights (the timing does not depend on them). The three paths are run in turn,
``--repeats`` times, rotating which goes first, so load from other processes hits them alike;
the table gives the median seconds. All compute the same maps (asserted to 1e-4 relative);
the ratio is the loop's median seconds / the path's, and per round the loop's seconds / the
path's in that round (a load change between rounds moves both). Target: >= 3x on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from convplat.training.models import create_model
from convplat.visualize import occlusion


def close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-4) -> None:
    """Equal to ``rtol`` of the map's scale (a map's cells near zero have no relative size)."""
    scale = max(float(np.abs(b).max()), 1e-12)
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=1000).eval()
    side = model.input_size
    image = torch.randn(3, side, side)
    run = dict(label=None, size=args.size, stride=args.stride)
    paths = {
        "one forward pass per position": dict(batch_size=1, incremental=False),
        f"batched ({args.batch_size} per pass)": dict(
            batch_size=args.batch_size, incremental=False
        ),
        f"batched incremental ({args.batch_size} per pass)": dict(
            batch_size=args.batch_size, incremental=True
        ),
    }
    occlusion(model, image, batch_size=2, size=side, stride=1)  # warm-up (one position)
    occlusion(model, image, batch_size=2, size=side, stride=1, incremental=False)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    results = {}
    names = list(paths)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            results[name] = occlusion(model, image, **paths[name], **run)
            seconds[name].append(time.perf_counter() - start)
            print(f"run {r + 1}: {name}: {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)
    reference = results[names[0]]
    for name in names[1:]:
        for key in ("prob", "feature"):
            close(results[name][key], reference[key])
    agree = min(float((results[n]["label"] == reference["label"]).mean()) for n in names)
    positions = reference["prob"].size
    print(
        f"{args.model}, {side}x{side} image, {args.size}x{args.size} square, stride "
        f"{args.stride}: {positions} positions, {args.threads} threads, median of "
        f"{args.repeats} interleaved runs\n"
    )
    base = statistics.median(seconds[names[0]])
    print("| path | seconds (median) | all runs | positions/s | ratio | ratio per round |")
    print("|---|---:|---|---:|---:|---|")
    for name in names:
        t = statistics.median(seconds[name])
        runs = ", ".join(f"{s:.2f}" for s in seconds[name])
        rounds = ", ".join(
            f"{a / b:.2f}x" for a, b in zip(seconds[names[0]], seconds[name], strict=True)
        )
        print(f"| {name} | {t:.2f} | {runs} | {positions / t:.1f} | {base / t:.2f}x | {rounds} |")
    print(f"\nmaps equal to 1e-4 relative; argmax labels agree at {agree:.1%} of positions")


if __name__ == "__main__":
    main()
