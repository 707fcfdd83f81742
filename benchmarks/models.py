"""Forward+backward throughput of every registered model against torchvision's AlexNet,
measured in the same run, in contiguous and channels_last memory formats.

    python benchmarks/models.py --steps 3                      # CPU, batch 32
    python benchmarks/models.py --device cuda --amp --compile  # bf16 autocast, torch.compile

Each model's steps alternate with steps of torchvision's AlexNet in the same memory format, so
the time-per-multiply-add ratio compares numbers taken under the same load (best of --steps
each). Target: alexnet_1col within 1.1x of torchvision per multiply-add.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from convplat.training.models import count_macs, create_model, list_models, model_info

BASELINE = "torchvision_alexnet"
TARGET_MODEL, TARGET_RATIO = "alexnet_1col", 1.1


def build(name: str, device: torch.device) -> tuple[nn.Module, int, int]:
    """(model, input size, MACs per image)."""
    if name == BASELINE:
        with torch.device("meta"):
            macs = count_macs(torchvision.models.alexnet(weights=None), torch.empty(1, 3, 224, 224))
        return torchvision.models.alexnet(weights=None).to(device), 224, macs
    info = model_info(name)
    return create_model(name).to(device), info["input_size"], info["macs"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    model: nn.Module, size: int, args: argparse.Namespace, channels_last: bool
) -> Callable[[], None]:
    """One forward+backward step at ``args.batch`` on random images, ready to time."""
    device = torch.device(args.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    step_model = torch.compile(model) if args.compile else model
    images = torch.randn(args.batch, 3, size, size, device=device).to(memory_format=fmt)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(step_model(images), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def timed(step: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t


def measure_pair(
    baseline: Callable[[], None], candidate: Callable[[], None], args: argparse.Namespace
) -> tuple[float, float]:
    """Best-of-``steps`` seconds per step for both, alternating steps so that load from other
    processes hits both alike."""
    device = torch.device(args.device)
    for _ in range(args.warmup):
        baseline()
        candidate()
    pairs = [(timed(baseline, device), timed(candidate, device)) for _ in range(args.steps)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (best reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument(
        "--models",
        default="alexnet,alexnet_1col,zfnet,overfeat_fast,overfeat_accurate",
        help="comma-separated registered names (default: the five published nets; "
        "`all` adds the ablation variants)",
    )
    parser.add_argument(
        "--formats", default="contiguous,channels_last", help="contiguous and/or channels_last"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    names = list_models() if args.models == "all" else args.models.split(",")
    formats = args.formats.split(",")

    print(
        f"device={args.device} batch={args.batch} steps={args.steps} amp={args.amp} "
        f"compile={args.compile} threads={torch.get_num_threads()} torch={torch.__version__}"
    )
    device = torch.device(args.device)
    tv_model, tv_size, tv_macs = build(BASELINE, device)
    rows = []  # (name, format, input, MACs, seconds, baseline seconds measured beside it)
    for name in names:
        model, size, macs = build(name, device)
        for fmt in formats:
            cl = fmt == "channels_last"
            base_step = make_step(tv_model, tv_size, args, cl)
            base, seconds = measure_pair(base_step, make_step(model, size, args, cl), args)
            rows.append((name, fmt, size, macs, seconds, base))
            print(f"  {name:<18} {fmt:<14} {seconds * 1e3:8.1f} ms/step, tv {base * 1e3:.1f}")
        del model

    print()
    header = f"{'model':<20} {'format':<14} {'input':>5} {'GMACs':>6} {'img/s':>8} "
    print(header + f"{'ms/step':>9} {'time/MAC vs tv':>15}")
    for fmt in reversed(formats):  # the baseline rows first: its best step beside any model
        base = min(r[5] for r in rows if r[1] == fmt)
        rows.insert(0, (BASELINE, fmt, tv_size, tv_macs, base, base))
    for name, fmt, size, macs, seconds, base in rows:
        ratio = (seconds / macs) / (base / tv_macs)
        print(
            f"{name:<20} {fmt:<14} {size:>5} {macs / 1e9:>6.3f} {args.batch / seconds:>8.1f} "
            f"{seconds * 1e3:>9.1f} {ratio:>14.2f}x"
        )
    for name, fmt, _, macs, seconds, base in rows:
        if name == TARGET_MODEL:
            ratio = (seconds / macs) / (base / tv_macs)
            verdict = "ok" if ratio <= TARGET_RATIO else "OVER TARGET"
            print(f"target {name} {fmt}: {ratio:.2f}x per MAC (<= {TARGET_RATIO}x): {verdict}")


if __name__ == "__main__":
    main()
