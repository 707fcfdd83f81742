"""AlexNet's two columns on two workers (AlexNet §3.2) against data parallelism, same global batch.

Runs two gloo processes on this machine (CPU) for each scheme and prints, in one run:
- step time and images/s of column-parallel vs data-parallel (DDP) training, and their ratio;
- bytes exchanged per step: computed from the layer shapes and counted at the collectives;
- per-worker parameter and activation memory against the single-process model (the paper
  split the net because 1.2M images' worth of training did not fit one 3 GB GTX 580).

    python benchmarks/columns.py --batch 32 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from convplat.training import columns
from convplat.training.models import create_model

CLASSES = 1000


def saved_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one forward, weights excluded: the
    activation memory."""
    total = 0
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in weights:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images).sum()
    return total


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _worker(rank: int, scheme: str, args, store: str, out: str) -> None:
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    torch.manual_seed(0)
    full = create_model("alexnet", num_classes=CLASSES)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(1)
    if scheme == "columns":
        grid = columns.make_grid(rank, 2)
        model: nn.Module = columns.ColumnAlexNet(full, grid)
        batch = args.batch  # both columns read the whole batch
    else:
        grid = None
        model = nn.parallel.DistributedDataParallel(full)
        batch = args.batch // 2  # each replica half of it
    del full
    images = torch.randn(batch, 3, 224, 224, generator=generator)
    labels = torch.randint(0, CLASSES, (batch,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(images), labels).backward()
        optimizer.step()

    step()  # warm-up
    if grid is not None:
        grid.traffic.update(forward=0, backward=0)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    dist.barrier()
    seconds = (time.perf_counter() - started) / args.steps
    module = model.module if scheme == "data" else model
    traffic = (
        {k: v / args.steps for k, v in grid.traffic.items()}
        if grid
        else {"gradients": param_bytes(module)}
    )
    activation = saved_bytes(module, images)
    if rank == 0:
        result = {
            "seconds": seconds,
            "params": param_bytes(module),
            "activations": activation,
            "batch": batch,
            "traffic": traffic,
        }
        with open(out, "w") as handle:
            json.dump(result, handle)
    dist.destroy_process_group()


def run(scheme: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(scheme, args, os.path.join(tmp, "store"), out), nprocs=2)
        with open(out) as handle:
            return json.load(handle)


def computed_bytes(batch: int) -> dict[str, int]:
    """What the shapes say one column sends per step (float32), forward and backward."""
    # Forward: its half of conv2's pooled maps (conv3 input), conv5's pooled maps (fc6), fc6's
    # and fc7's outputs, and its 500 logits.
    forward = batch * (128 * 13 * 13 + 128 * 6 * 6 + 2048 + 2048 + CLASSES // 2) * 4
    # Backward: the gradient of each gathered tensor (both halves) is summed over the pair.
    backward = batch * (256 * 13 * 13 + 256 * 6 * 6 + 4096 + 4096) * 4
    return {"forward": forward, "backward": backward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = run("data", args)
    cols = run("columns", args)
    torch.manual_seed(0)
    single = create_model("alexnet", num_classes=CLASSES)
    single_act = saved_bytes(single, torch.randn(args.batch, 3, 224, 224))
    mb = 1 / 2**20
    print(f"AlexNet (two columns), global batch {args.batch}, 2 gloo processes on the CPU\n")
    print("| scheme | per-worker batch | s/step | images/s | vs data parallel |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("data parallel (DDP)", data), ("column parallel (§3.2)", cols)):
        rate = args.batch / r["seconds"]
        ratio = data["seconds"] / r["seconds"]
        print(f"| {name} | {r['batch']} | {r['seconds']:.3f} | {rate:.1f} | {ratio:.2f}x |")
    computed = computed_bytes(args.batch)
    measured = cols["traffic"]
    print("\n| bytes per step, per worker | computed from shapes | counted at collectives |")
    print("|---|---:|---:|")
    for kind in ("forward", "backward"):
        print(
            f"| columns, {kind} | {computed[kind] * mb:.2f} MiB | {measured[kind] * mb:.2f} MiB |"
        )
    grads = data["traffic"]["gradients"]
    print(f"| data parallel, gradient all-reduce | {grads * mb:.2f} MiB | - |")
    print("\n| memory per worker | parameters | activations (saved for backward) |")
    print("|---|---:|---:|")
    single_params = param_bytes(single)
    print(
        f"| one process, whole model, batch {args.batch} | {single_params * mb:.1f} MiB | "
        f"{single_act * mb:.1f} MiB |"
    )
    print(
        f"| data parallel worker, batch {data['batch']} | {data['params'] * mb:.1f} MiB | "
        f"{data['activations'] * mb:.1f} MiB |"
    )
    print(
        f"| column worker, batch {cols['batch']} | {cols['params'] * mb:.1f} MiB "
        f"({cols['params'] / single_params:.2f}x) | {cols['activations'] * mb:.1f} MiB "
        f"({cols['activations'] / single_act:.2f}x) |"
    )


if __name__ == "__main__":
    main()
