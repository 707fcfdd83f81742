"""GPU training throughput: the training step alone, the step fed by the shard loader, and
`convplat train --gpus 1` through Ray Train, measured in one run on one card.

    python benchmarks/gpu_train.py                                 # on a GPU, all sections
    python benchmarks/gpu_train.py --device cpu --batch 8 --steps 4 --a-steps 4 --warmup 1 \\
        --models alexnet --workers 0,1 --sections A,B,C               # smoke run on the CPU

(A) the step ceiling: `train_one_epoch` (transform, forward, loss, backward, SGD) over one
real batch kept on the device, for each model in fp32 and in bf16 autocast + channels_last;
torchvision's AlexNet in the same loop is the baseline beside ours. (B) the same loop fed by
`train_loader` from the shards with 0..N loader processes: its ratio to (A) is what the input
pipeline costs. (C) `fit()` on a local Ray with one GPU worker: its ratio to (B) at the same
loader workers is what Ray Train costs. (D) the first model's step of (A) under torch.compile,
as `--compile` runs it.

The shards default to a small demo set under benchmarks/_work/gpu/shards (made here with a
local Ray when missing; carry it to a machine without Ray and give ``--sections A,B,D``).

Rates in (A) and (B) are steady state: images after ``--warmup`` steps over the time from the
end of the warm-up step to the end of the last (device synchronised at both ends); (B) also
prints the rate over the whole call, loader start-up included, which is what (C)'s epoch
timing measures. The shard set is small, so its train shards are listed several times in a
benchmark-only manifest (symlinks to the same tars) to make an epoch of ``--steps`` batches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import time
from pathlib import Path

import torch
import torchvision

from convplat.pipeline.shardset import load_stats, read_manifest
from convplat.training.augment import BatchTransform
from convplat.training.data import train_loader
from convplat.training.loop import train_one_epoch
from convplat.training.models import LocalResponseNorm, create_model

WORK = Path(__file__).resolve().parent / "_work" / "gpu"
BASELINE = "torchvision_alexnet"
PRECISIONS = {
    "fp32": (False, False),
    "bf16+cl": (True, True),
    "fp32+cl": (False, True),
    "bf16": (True, False),
}  # name: (amp, channels_last)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ensure_shards(shards: Path) -> Path:
    """The default shard set: 640 train and 130 val demo images, made once on a local Ray."""
    if (shards / "manifest.json").is_file():
        return shards
    import ray

    from convplat.cluster import ensure_ray
    from convplat.config import PrepareConfig
    from convplat.demo import make_demo_data
    from convplat.pipeline import prepare

    data = WORK / "data"
    make_demo_data(
        out=data,
        train_per_class=64,
        val_per_class=13,
        caltech_classes=2,
        caltech_per_class=5,
        voc=False,
    )
    ensure_ray()
    config = PrepareConfig(
        source=str(data / "imagenet"), out=str(shards), shard_size=40, progress=False
    )
    prepare(config)
    ray.shutdown()
    return shards


def repeated_shards(shards: Path, out: Path, min_images: int) -> Path:
    """A shard dir whose manifest lists the train shards enough times for ``min_images``."""
    manifest = read_manifest(shards)
    train = manifest["splits"]["train"]
    times = -(-min_images // int(train["count"]))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in shards.iterdir():
        if path.suffix in (".tar", ".npz", ".parquet"):
            (out / path.name).symlink_to(path.resolve())
    train["shards"] = train["shards"] * times
    train["count"] = int(train["count"]) * times
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def build(
    name: str, classes: int, device: torch.device, channels_last: bool, lrn_conv: bool | None = None
):
    """(model on ``device``, input size); ``lrn_conv`` forces the LRN window-sum method."""
    torch.manual_seed(0)
    if name == BASELINE:
        model, size = torchvision.models.alexnet(weights=None, num_classes=classes), 224
    else:
        model = create_model(name, num_classes=classes)
        size = model.input_size
    for module in model.modules():
        if isinstance(module, LocalResponseNorm):
            module.conv = lrn_conv
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt), size


def timed_epoch(model, batches, transform, device, amp, warmup, batch, sync_every_step=False):
    """`train_one_epoch` with a steady-state clock started after ``warmup`` steps.

    A diverged loss (a random-init net on one repeated batch can blow up) is recorded, not
    raised: the step costs the same.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    mark: dict = {"images": 0}

    def on_step(step: int, loss: torch.Tensor) -> None:
        mark["images"] += batch
        if sync_every_step:
            float(loss)  # what a per-step progress read costs: the host waits for the device
        if step + 1 == warmup:
            sync(device)
            mark["start"], mark["steps"] = time.perf_counter(), step + 1

    called = time.perf_counter()
    try:
        result = train_one_epoch(
            model, batches, transform, optimizer, device, amp=amp, on_step=on_step
        )  # ends with float(loss sum): synchronised
    except FloatingPointError:
        result = {"data_wait": float("nan"), "train_loss": float("nan")}
    sync(device)
    end = time.perf_counter()
    return {
        "images_per_s": (mark["images"] - mark["steps"] * batch) / (end - mark["start"]),
        "with_startup": mark["images"] / (end - called),
        "data_wait": result["data_wait"],
        "loss": result["train_loss"],
    }


def resident(batch, device, steps: int):
    """The same device-resident batch ``steps`` times: the loop with the loader taken out."""
    crops, labels, windows = (t.to(device) for t in batch)
    return itertools.repeat((crops, labels, windows), steps)


def section_a(
    args, shards: Path, device, classes: int, results: list, compiled: bool = False
) -> None:
    """(A), or with ``compiled`` (D): the first model under torch.compile, as --compile does."""
    label = "D" if compiled else "A"
    what = "torch.compile'd " if compiled else ""
    print(f"\n({label}) {what}training step on a device-resident batch, batch {args.batch}")
    stats = load_stats(shards)
    names = args.models.split(",")[:1] if compiled else args.models.split(",") + [BASELINE]
    for name in names:
        if compiled:
            precisions = [args.precision]
        else:
            precisions = list(PRECISIONS) if name == "alexnet" else ["fp32", "bf16+cl"]
        has_lrn = any(isinstance(m, LocalResponseNorm) for m in create_model_meta(name))
        lrn_methods = [None, False] if args.lrn_compare and has_lrn and not compiled else [None]
        for precision, lrn_conv in itertools.product(precisions, lrn_methods):
            amp, cl = PRECISIONS[precision]
            model, size = build(name, classes, device, cl, lrn_conv)
            label_name = name if lrn_conv is None else f"{name} [shift LRN]"
            batch = next(
                iter(
                    train_loader(
                        shards, batch_size=args.batch, epoch=1, num_workers=0, crop_size=size
                    )
                )
            )
            transform = BatchTransform.from_stats(stats, channels_last=cl).to(device)
            step_model = torch.compile(model) if compiled else model
            row = timed_epoch(
                step_model,
                resident(batch, device, args.a_steps),
                transform,
                device,
                amp,
                args.warmup,
                args.batch,
            )
            row.update(section=label, model=label_name, precision=precision, workers=None)
            results.append(row)
            print(
                f"  {label_name:<28} {precision:<8} {row['images_per_s']:>9.0f} img/s", flush=True
            )
            del model
            _free(device)


def create_model_meta(name: str) -> list:
    """The modules of ``name`` built on the meta device (no memory): to look for LRN layers."""
    if name == BASELINE:
        return []
    with torch.device("meta"):
        return list(create_model(name).modules())


def section_l(args, device, results: list) -> None:
    """(L) LocalResponseNorm alone, forward+backward on AlexNet's conv1/conv2 maps."""
    print(f"\n(L) LRN forward+backward, batch {args.batch}, median of 20")
    shapes = [(96, 55, 2), (256, 27, 2), (96, 55, 1)]  # channels, side, columns
    for (channels, side, columns), cl in itertools.product(shapes, (False, True)):
        fmt = torch.channels_last if cl else torch.contiguous_format
        x = 20 * torch.randn(args.batch, channels, side, side, device=device)
        x = x.to(memory_format=fmt)
        grad = torch.randn_like(x)
        methods = {
            "shift": LocalResponseNorm(columns=columns, conv=False),
            "conv": LocalResponseNorm(columns=columns, conv=True),
        }
        if columns == 1:
            methods["torch"] = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
        for method, layer in methods.items():
            row = {
                "section": "L",
                "shape": f"{channels}x{side}x{side}/{columns} col",
                "format": "channels_last" if cl else "contiguous",
                "method": method,
                "ms": _median_ms(layer, x, grad, device),
            }
            results.append(row)
            print(f"  {row['shape']:<18} {row['format']:<14} {method:<6} {row['ms']:8.2f} ms")


def _median_ms(layer, x, grad, device, reps: int = 20) -> float:
    times = []
    for i in range(reps + 3):
        a = x.detach().requires_grad_()
        sync(device)
        start = time.perf_counter()
        layer(a).backward(grad)
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def section_b(args, shards: Path, device, classes: int, results: list) -> None:
    name = args.models.split(",")[0]
    print(f"\n(B) {name}: the same loop fed by train_loader, batch {args.batch}")
    stats = load_stats(shards)
    runs = [(args.precision, w, True, False) for w in map(int, args.workers.split(","))]
    best = max(map(int, args.workers.split(",")))
    runs += [(args.precision, best, False, False), (args.precision, best, True, True)]
    if args.precision != "fp32":
        runs.append(("fp32", best, True, False))
    for precision, workers, pin, sync_each in runs:
        amp, cl = PRECISIONS[precision]
        model, size = build(name, classes, device, cl)
        transform = BatchTransform.from_stats(stats, channels_last=cl).to(device)
        loader = train_loader(
            shards,
            batch_size=args.batch,
            epoch=1,
            num_workers=workers,
            crop_size=size,
            pin_memory=pin and device.type == "cuda",
        )
        batches = itertools.islice(loader, args.steps)
        row = timed_epoch(
            model, batches, transform, device, amp, args.warmup, args.batch, sync_each
        )
        row.update(
            section="B",
            model=name,
            precision=precision,
            workers=workers,
            pin_memory=pin and device.type == "cuda",
            sync_every_step=sync_each,
        )
        results.append(row)
        print(
            f"  {precision:<8} workers {workers:>2} pin {int(row['pin_memory'])} "
            f"sync/step {int(sync_each)}: {row['images_per_s']:>8.0f} img/s steady, "
            f"{row['with_startup']:>8.0f} with start-up, data wait {row['data_wait']:.2f}",
            flush=True,
        )
        del model
        _free(device)


def section_c(args, shards: Path, device, results: list) -> None:
    import ray

    from convplat.cluster import ensure_ray
    from convplat.config import TrainConfig
    from convplat.training import fit

    name = args.models.split(",")[0]
    amp, cl = PRECISIONS[args.precision]
    workers = max(map(int, args.workers.split(",")))
    gpus = 1 if device.type == "cuda" else 0
    print(f"\n(C) convplat train {name} --gpus {gpus} through Ray Train, {workers} loader workers")
    started = time.perf_counter()
    ensure_ray(num_cpus=workers + 1, num_gpus=gpus)
    out = WORK / "runs"
    shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(  # epoch 2 runs with the model and cuDNN's choices warm
        model=name,
        data=str(shards),
        out=str(out),
        epochs=args.ray_epochs,
        batch_size=args.batch,
        gpus=gpus,
        workers=1,
        cpus_per_worker=workers + 1,
        loader_workers=workers,
        amp=amp,
        channels_last=cl,
        limit_train_batches=args.steps,
        limit_val_batches=2,
        progress=False,
        run_name="bench",
    )
    run = Path(fit(config))
    wall = time.perf_counter() - started
    ray.shutdown()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        metrics = json.loads(line)
        row = {
            "section": "C",
            "model": name,
            "precision": args.precision,
            "workers": workers,
            "epoch": metrics["epoch"],
            "with_startup": metrics["images_per_s"],
            "data_wait": metrics["data_wait"],
            "wall": wall,
        }
        results.append(row)
        print(
            f"  epoch {row['epoch']}: {row['with_startup']:.0f} img/s over the epoch, "
            f"data wait {row['data_wait']:.2f}; Ray start to end {wall:.1f} s",
            flush=True,
        )


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def report(results: list, args) -> None:
    a = {(r["model"], r["precision"]): r["images_per_s"] for r in results if r["section"] == "A"}
    d = {(r["model"], r["precision"]): r["images_per_s"] for r in results if r["section"] == "D"}
    print("\n| (A) model | precision | img/s | vs fp32 | vs torchvision AlexNet |")
    print("|---|---|---:|---:|---:|")
    for (model, precision), rate in a.items():
        tv = a.get((BASELINE, precision))
        vs_tv = f"{rate / tv:.2f}x" if tv else "-"
        print(
            f"| {model} | {precision} | {rate:,.0f} | {rate / a[(model, 'fp32')]:.2f}x | {vs_tv} |"
        )
    if d:
        print("\n| (D) torch.compile | precision | img/s | vs (A) eager |\n|---|---|---:|---:|")
    for (model, precision), rate in d.items():
        eager = a.get((model, precision))
        vs_eager = f"{rate / eager:.2f}x" if eager else "-"
        print(f"| {model} | {precision} | {rate:,.0f} | {vs_eager} |")
    lrn = [r for r in results if r["section"] == "L"]
    if lrn:
        print(
            "\n| (L) LRN input | format | method | ms fwd+bwd | vs shift |\n|---|---|---|---:|---:|"
        )
    for r in lrn:
        shift = next(
            q["ms"]
            for q in lrn
            if q["shape"] == r["shape"] and q["format"] == r["format"] and q["method"] == "shift"
        )
        print(
            f"| {r['shape']} | {r['format']} | {r['method']} | {r['ms']:.2f} | "
            f"{shift / r['ms']:.2f}x |"
        )
    name = args.models.split(",")[0]
    print(
        f"\n| (B) {name}, loader | precision | workers | pin | sync/step | img/s steady | "
        f"vs (A) | with start-up | data wait |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in (r for r in results if r["section"] == "B"):
        ceiling = a.get((r["model"], r["precision"]))
        ratio = f"{r['images_per_s'] / ceiling:.2f}x" if ceiling else "-"
        print(
            f"| train_loader | {r['precision']} | {r['workers']} | {int(r['pin_memory'])} | "
            f"{int(r['sync_every_step'])} | {r['images_per_s']:,.0f} | {ratio} | "
            f"{r['with_startup']:,.0f} | {r['data_wait']:.2f} |"
        )
    b = {
        r["workers"]: r["with_startup"]
        for r in results
        if r["section"] == "B"
        and r["precision"] == args.precision
        and r["pin_memory"] == (args.device == "cuda")
        and not r["sync_every_step"]
    }
    for r in (r for r in results if r["section"] == "C"):
        base = b.get(r["workers"])
        ratio = f"{r['with_startup'] / base:.2f}x (B) with start-up" if base else ""
        print(
            f"(C) Ray Train epoch {r['epoch']}: {r['with_startup']:,.0f} img/s, {ratio}, "
            f"data wait {r['data_wait']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default=str(WORK / "shards"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="batches per loader call")
    parser.add_argument("--a-steps", type=int, default=60, help="batches per (A)/(D) call")
    parser.add_argument("--warmup", type=int, default=10, help="steps before the clock starts")
    parser.add_argument("--models", default="alexnet,zfnet,overfeat_fast,overfeat_accurate")
    parser.add_argument("--precision", default="bf16+cl", choices=list(PRECISIONS))
    parser.add_argument("--workers", default="0,4,8,14", help="loader processes in (B)")
    parser.add_argument("--ray-epochs", type=int, default=2)
    parser.add_argument(
        "--lrn-compare", action="store_true", help="(A) also with LRN as shifted adds"
    )
    parser.add_argument(
        "--sections", default="A,B,C,D", help="D: (A) under torch.compile; L: the LRN layer"
    )
    parser.add_argument("--json", default=None, help="also write every row here")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(
            f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
            f"{os.cpu_count()} CPUs"
        )
    source = ensure_shards(Path(args.shards))
    shards = repeated_shards(source, WORK / "repeated", args.batch * args.steps)
    classes = 1000  # ImageNet's head: the demo labels are a subset
    results: list = []
    steps = {
        "A": lambda: section_a(args, shards, device, classes, results),
        "B": lambda: section_b(args, shards, device, classes, results),
        "C": lambda: section_c(args, shards, device, results),
        "D": lambda: section_a(args, shards, device, classes, results, compiled=True),
        "L": lambda: section_l(args, device, results),
    }
    try:
        for section in args.sections.split(","):
            steps[section]()
            if args.json:  # after each section: a run cut short still leaves its rows
                Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        report(results, args)


if __name__ == "__main__":
    main()
