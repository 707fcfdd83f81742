"""Occlusion sensitivity (ZFNet §4.2): batched occluded copies vs one forward pass per position.

    python benchmarks/occlusion.py                       # alexnet, 224, 32x32 square, stride 8
    python benchmarks/occlusion.py --model zfnet --batch-size 64

Random weights (the timing does not depend on them). Both paths compute the same maps (asserted
allclose); the printed ratio is loop seconds / batched seconds. Target: >= 3x on CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from convplat.training.models import create_model
from convplat.visualize import occlusion


def timed(fn) -> tuple[float, dict]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=1000).eval()
    side = model.input_size
    image = torch.randn(3, side, side)
    run = dict(label=None, size=args.size, stride=args.stride)
    occlusion(model, image, batch_size=2, size=side, stride=1)  # warm-up (one position)
    t_batched, batched = timed(lambda: occlusion(model, image, batch_size=args.batch_size, **run))
    t_loop, loop = timed(lambda: occlusion(model, image, batch_size=1, **run))
    for key in ("prob", "feature"):
        np.testing.assert_allclose(loop[key], batched[key], rtol=1e-3, atol=1e-5)
    agree = float((loop["label"] == batched["label"]).mean())
    positions = batched["prob"].size
    print(
        f"{args.model}, {side}x{side} image, {args.size}x{args.size} square, stride "
        f"{args.stride}: {positions} positions, {args.threads} threads\n"
    )
    print("| path | seconds | positions/s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| one forward pass per position | {t_loop:.2f} | {positions / t_loop:.1f} | 1.00x |")
    print(
        f"| batched ({args.batch_size} per pass) | {t_batched:.2f} | "
        f"{positions / t_batched:.1f} | {t_loop / t_batched:.2f}x |"
    )
    print(f"\nmaps allclose; argmax labels agree at {agree:.1%} of positions")


if __name__ == "__main__":
    main()
