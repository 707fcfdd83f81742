"""How each stage's cost and driver memory grow with its work (issue 15 §3).

Three stages, each selectable with ``--stage`` (default all three, in this order):

prepare   ``prepare --size 64`` through Ray on 1k, 4k, 16k, 64k generated 320x240 JPEGs (90 %
          train / 10 % val, ``--shard-size 500``). Time: the ``prepare()`` call, Ray and its
          workers already up and warm, so the fixed start-up cost does not hide the growth:
          each child first runs an untimed prepare of ``--warm-images`` (1,000) others, which
          gives every worker a shard task and the driver its first Parquet write (pyarrow
          imports pandas then, ~0.3 s); its time is printed beside the row (0: no warm-up).
features  ``convplat features`` (``extract(..., executor="ray")``) of AlexNet's ``conv1``,
          globally average-pooled (96 floats an image: cheap to compute and to write, so the
          per-image cost is the stage's own plumbing, decode and the first layer) over shard
          sets of 1k, 4k, 16k images prepared at ``--size 256`` (untimed, before the runs),
          one Ray task per shard. Time: the ``extract()`` call, Ray and its workers up and
          torch imported in them.
loader    one epoch of ``convplat.training.data.TrainLoader`` over 16, 64, 256, 1,024 train
          shards of 16 images each (``--size 64``, random 56 crops, batch 32, one loader
          process) with the trainer's float transform (``BatchTransform(reuse_output=True)``,
          mean window, PCA lighting, flip) applied to every batch. Time: the median of epochs
          2-6 (the loader processes up, as for every epoch of a run after the first; one
          4k-image epoch takes ~0.6 s, and single epochs move by +-10 % on two cores); the
          first epoch, which includes starting the loader process, is printed beside it.

How memory is measured: every size runs in a fresh child process (``--child``), and its driver
peak RSS is that process's own high-water mark, ``VmHWM`` in ``/proc/self/status`` (it cannot be
reset within a process, hence one process per size; Ray's workers, the raylet and the loader
processes are other processes and not in it). Not ``ru_maxrss``: Linux carries a parent's
high-water mark over fork and exec into the child's, so a child of this (torch-importing)
script would report the script's peak. The loader rows also print the loader process's peak
(its ``VmHWM``, read while it is alive). "store peak" is the object store's high-water mark:
the allocated size of the plasma file the raylet maps (``st_blocks`` of its deleted /dev/shm
file, through ``/proc/<raylet>/fd``): pages stay allocated once an object was written there.
It includes what the stage itself puts (features: the model's weights, once) and excludes
objects under 100 KB, which Ray inlines (prepare's statistics partials at --size 64). (The
raylet's own peak RSS, used here before, does not count these pages: writers touch them.)

Printed per stage: per size the wall time, time per item, driver peak RSS, store peak and
output size (loader: the shard bytes read); then the least-squares exponent of time vs size,
the driver RSS ratio between the largest and the second size, the per-item time at the largest
size against the size nearest 4k items, and the targets: exponent <= 1.05, RSS ratio <= 1.1,
per-item within 10 %, each "met" or "missed"; last the least-squares line seconds = fixed +
marginal x items and the marginal cost between successive sizes, which tell a fixed cost that
is still amortising (time per item falling) from growth (marginal cost rising).

Repeats: a size whose first run takes under ``--repeat-under`` (10 s) runs ``--repeats`` (3)
times in all, each in a fresh child process; its row prints the median time and the largest
memory figures. A 1-s run on two cores moves by ~15 % between runs, enough to swing the
per-item comparison at 4k items either way. The runs go in rounds (every size, then every
short size again, ...), so that a slow spell of the shared machine, which can last tens of
seconds, does not land on all the runs of one size: it once made the loader's 16k row 21 %
slower per item than its 4k row while other runs of the same code gave 1.03-1.04.

Usage: python benchmarks/scale.py [--stage prepare,features,loader]
       [--sizes 1000,4000,16000,64000] [--image-size 64] [--shard-size 500] [--warm-images 1000]
       [--feature-sizes 1000,4000,16000] [--feature-shard-size 500]
       [--loader-shards 16,64,256,1024] [--loader-shard-images 16] [--cpus 2]
       [--repeats 3] [--repeat-under 10]
Source images are 256 distinct photo-like JPEGs, hard-linked under benchmarks/_work/scale/
(decoding cost does not depend on whether two files hold the same bytes); no network. The
prepared inputs of the features and loader stages are kept there for the next run (``--work``
puts them elsewhere, ``--clean`` removes the folder at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work" / "scale"
DISTINCT = 256
CLASSES = 10
STAGES = ("prepare", "features", "loader")
FEATURE_MODEL, FEATURE_LAYER, FEATURE_POOL = "alexnet", "conv1", "avg"
LOADER_BATCH, LOADER_CROP, LOADER_SIZE, LOADER_WORKERS = 32, 56, 64, 1
LOADER_EPOCHS = 5  # timed epochs after the first; their median is the row's time


def set_work(path: Path) -> None:
    global WORK
    WORK = path.resolve()


# --- inputs -------------------------------------------------------------------------------------


def make_sources(count: int, val_every: int = 10) -> Path:
    """An ImageFolder tree of ``count`` JPEGs (hard links to DISTINCT generated 320x240 ones);
    every ``val_every``-th file goes to val (0: none)."""
    root = WORK / (f"raw-{count}" if val_every == 10 else f"raw-{count}-v{val_every}")
    if (root / "done").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    pool = WORK / "pool"
    if not (pool / "done").exists():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import numpy as np
        from prepare import natural_image  # benchmarks/prepare.py's photo-like generator

        pool.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(DISTINCT):
            natural_image(rng, 320, 240).save(pool / f"{i}.jpg", "JPEG", quality=90)
        (pool / "done").write_text("")
    for i in range(count):
        split = "val" if val_every and i % val_every == val_every - 1 else "train"
        folder = root / split / f"n{1000 + i % CLASSES:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(pool / f"{i % DISTINCT}.jpg", folder / f"img_{i}.JPEG")
    (root / "done").write_text("")
    return root


def make_shards(name: str, count: int, size: int, shard_size: int, val_every: int = 10) -> Path:
    """A shard set of ``count`` generated images (untimed input of a stage), made once."""
    out = WORK / name
    if (out / "done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    from convplat.config import PrepareConfig
    from convplat.pipeline import prepare

    source = make_sources(count, val_every)
    config = PrepareConfig(
        source=str(source),
        out=str(out / "shards"),
        size=size,
        shard_size=shard_size,
        progress=False,
    )
    prepare(config, executor="local")
    (out / "done").write_text("")
    return out


def make_feature_run(shards: Path) -> Path:
    """A hand-made run (config, random-init weights) whose training data is ``shards`` (the
    mean image of its stats.npz is subtracted before the model, as after training)."""
    run = WORK / "features-run"
    if (run / "model.safetensors").exists():
        return run
    import torch

    from convplat.training.checkpoints import state_dict_bytes
    from convplat.training.models import create_model

    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model(FEATURE_MODEL, num_classes=1000)
    config = {"model": FEATURE_MODEL, "num_classes": 1000, "data": str(shards / "shards")}
    (run / "config.json").write_text(json.dumps({**config, "input_scale": 1 / 64}))
    (run / "model.safetensors").write_bytes(state_dict_bytes(model))
    return run


# --- one measurement per fresh process -----------------------------------------------------------


def _start_ray(cpus: int, imports: tuple[str, ...]) -> int:
    """Start a local Ray, warm one worker per CPU (``imports`` done), return the raylet's pid."""
    from convplat.cluster import ensure_ray, fan_out

    ensure_ray(num_cpus=cpus)
    import ray

    list(fan_out(_warm, ((i, (imports,), {}) for i in range(cpus))))
    return ray._private.worker._global_node.all_processes["raylet"][0].process.pid


def _warm(imports: tuple[str, ...]) -> None:
    """Start a Ray worker and its imports before the clock starts."""
    import importlib

    for name in imports:
        importlib.import_module(name)
    time.sleep(1.0)


def _hwm_kb(pid: int | str) -> int:
    """A process's peak RSS in kB (``VmHWM``, the high-water mark of its own address space)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _rss_kb() -> int:
    """This process's peak RSS. Not ``ru_maxrss``: Linux carries the parent's high-water mark
    over fork and exec into it, so a child of a big parent would report the parent's peak."""
    return _hwm_kb("self")


def _store_peak_kb(raylet: int) -> int:
    """The object store's peak in kB: the bytes ever touched in the raylet's plasma file (a
    deleted /dev/shm file whose pages stay allocated once written; freed objects' space is
    reused before new pages are touched), from the raylet's open file descriptor."""
    peak = 0
    for fd in os.listdir(f"/proc/{raylet}/fd"):
        try:
            if "plasma" in os.readlink(f"/proc/{raylet}/fd/{fd}"):
                peak = max(peak, os.stat(f"/proc/{raylet}/fd/{fd}").st_blocks * 512 // 1024)
        except OSError:
            continue
    return peak


def _children_hwm_kb() -> int:
    """The largest peak RSS among this process's living children (the loader processes)."""
    me, peak = str(os.getpid()), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
            if ppid == me:
                peak = max(peak, _hwm_kb(entry))
        except (OSError, IndexError, StopIteration):
            continue  # gone meanwhile
    return peak


def child_prepare(
    source: str, out: str, size: int, shard_size: int, cpus: int, warm_source: str
) -> dict:
    from convplat.config import PrepareConfig
    from convplat.pipeline import prepare

    raylet = _start_ray(cpus, ("convplat.pipeline.shards",))
    config = PrepareConfig(
        source=source, out=out, size=size, shard_size=shard_size, num_cpus=cpus, progress=False
    )
    warm_s = None
    if warm_source:  # the first prepare in a process pays first-use costs: not growth
        warm_out = f"{out}-warm"
        shutil.rmtree(warm_out, ignore_errors=True)
        warm = dataclasses.replace(config, source=warm_source, out=warm_out)
        t0 = time.perf_counter()
        prepare(warm, executor="ray")
        warm_s = time.perf_counter() - t0
        shutil.rmtree(warm_out, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = prepare(config, executor="ray")
    seconds = time.perf_counter() - t0
    return {
        "items": manifest["summary"]["images"],
        "seconds": seconds,
        "rss_kb": _rss_kb(),
        "store_kb": _store_peak_kb(raylet),
        "output": out,
        "warm_s": warm_s,
    }


def child_features(run: str, shards: str, out: str, cpus: int) -> dict:
    from convplat.export import extract

    raylet = _start_ray(cpus, ("torch", "convplat.export", "convplat.transfer.extract"))
    t0 = time.perf_counter()
    result = extract(
        run,
        shards,
        layer=FEATURE_LAYER,
        pool=FEATURE_POOL,
        out=out,
        executor="ray",
        device="cpu",
        progress=False,
    )
    seconds = time.perf_counter() - t0
    return {
        "items": result["rows"],
        "seconds": seconds,
        "rss_kb": _rss_kb(),
        "store_kb": _store_peak_kb(raylet),
        "output": out,
    }


def child_loader(shards: str) -> dict:
    import torch

    from convplat.pipeline.shardset import load_stats, read_manifest
    from convplat.training.augment import BatchTransform
    from convplat.training.data import TrainLoader

    torch.set_num_threads(1)
    transform = BatchTransform.from_stats(load_stats(shards), reuse_output=True)
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    loader = TrainLoader(
        shards, batch_size=LOADER_BATCH, num_workers=LOADER_WORKERS, crop_size=LOADER_CROP
    )
    times, images = [], 0
    for epoch in range(1 + LOADER_EPOCHS):
        images = 0
        for batch, labels, windows in loader.epoch(epoch):
            transform(batch, windows, generator)
            images += len(labels)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return {
        "items": images,
        "seconds": statistics.median(times[1:]),
        "first_s": times[0],
        "rss_kb": _rss_kb(),
        "loader_kb": _children_hwm_kb(),  # while the persistent loader process lives
        "output_bytes": sum(s["bytes"] for s in read_manifest(shards)["splits"]["train"]["shards"]),
    }


CHILDREN = {"prepare": child_prepare, "features": child_features, "loader": child_loader}


def in_child(stage: str, *args) -> dict:
    """Run ``CHILDREN[stage](*args)`` in a fresh Python process; its JSON result."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, __file__, "--child", stage, *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{stage} {args} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "output" in result:
        output = Path(result.pop("output"))
        result["output_bytes"] = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    return result


def measured(stage: str, args, jobs: list[tuple[tuple, Path | None]]) -> list[dict]:
    """Each job's ``in_child`` run, in rounds: every size once, then again, in the same order,
    those whose first run was shorter than ``args.repeat_under`` seconds, up to
    ``args.repeats`` runs. Interleaved, so a slow spell of a shared machine (tens of seconds)
    falls on every size rather than on all runs of one. A row has the median time and the
    largest memory figures of its runs. ``fresh`` (a job's output) is removed before each
    run and after it (prepare resumes into an existing output)."""
    runs: list[list[dict]] = [[] for _ in jobs]
    for round_ in range(max(1, args.repeats)):
        for (child_args, fresh), done in zip(jobs, runs, strict=True):
            if done and done[0]["seconds"] >= args.repeat_under:
                continue
            if fresh is not None:
                shutil.rmtree(fresh, ignore_errors=True)
            done.append(in_child(stage, *child_args))
            if fresh is not None:
                shutil.rmtree(fresh, ignore_errors=True)
            print(
                f"  round {round_ + 1}: {done[-1]['items']} items {done[-1]['seconds']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    rows = []
    for done in runs:
        row = dict(done[0])
        row["seconds"] = statistics.median(r["seconds"] for r in done)
        for key in ("rss_kb", "store_kb", "loader_kb"):
            if key in row:
                row[key] = max(r[key] for r in done)
        row["runs"] = len(done)
        rows.append(row)
    return rows


# --- the stages ---------------------------------------------------------------------------------


def stage_prepare(args) -> list[dict]:
    sizes = _sizes(args.sizes, "--sizes")
    title = (
        f"prepare --size {args.image_size} --shard-size {args.shard_size}, {args.cpus} CPUs, "
        "320x240 JPEG sources"
    )
    warm = make_sources(args.warm_images) if args.warm_images else ""
    jobs = []
    for count in sizes:
        source, out = make_sources(count), WORK / f"out-{count}"
        jobs.append(((source, out, args.image_size, args.shard_size, args.cpus, warm), out))
    return print_rows(title, measured("prepare", args, jobs))


def stage_features(args) -> list[dict]:
    sizes = _sizes(args.feature_sizes, "--feature-sizes")
    sets = {n: make_shards(f"features-{n}", n, 256, args.feature_shard_size) for n in sizes}
    run = make_feature_run(sets[sizes[-1]])
    title = (
        f"features {FEATURE_MODEL} {FEATURE_LAYER} (--pool {FEATURE_POOL}) over 256x256 shards of "
        f"{args.feature_shard_size}, --executor ray, {args.cpus} CPUs"
    )
    jobs = []
    for count in sizes:
        out = WORK / f"features-out-{count}.parquet"
        jobs.append(((run, sets[count] / "shards", out, args.cpus), out))
    return print_rows(title, measured("features", args, jobs))


def stage_loader(args) -> list[dict]:
    counts = _sizes(args.loader_shards, "--loader-shards")
    per = args.loader_shard_images
    title = (
        f"TrainLoader epoch: shards of {per} images at --size {LOADER_SIZE}, crop {LOADER_CROP}, "
        f"batch {LOADER_BATCH}, {LOADER_WORKERS} loader process, float batches "
        "(BatchTransform, reused output); median of epochs 2-6"
    )
    jobs = []
    for shards in counts:
        made = make_shards(f"loader-{shards}", shards * per, LOADER_SIZE, per, val_every=0)
        jobs.append(((made / "shards",), None))
    rows = measured("loader", args, jobs)
    for row, shards in zip(rows, counts, strict=True):
        row["shards"] = shards
    return print_rows(title, rows)


# --- printing ------------------------------------------------------------------------------------

HEADER = (
    f"{'items':>8} {'seconds':>9} {'ms/item':>8} {'driver RSS MB':>14} {'store peak MB':>14} "
    f"{'output MB':>10}  extra"
)


def print_rows(title: str, rows: list[dict]) -> list[dict]:
    """Print a stage's table (each run was announced on stderr as it finished)."""
    print(title, HEADER, sep="\n", flush=True)
    for row in rows:
        print_row(row)
    return rows


def print_row(r: dict) -> None:
    """Print one size's row."""
    store = f"{r['store_kb'] / 1024:>14.1f}" if "store_kb" in r else f"{'-':>14}"
    extra = []
    if "shards" in r:
        extra.append(f"{r['shards']} shards")
    if r.get("runs", 1) > 1:
        extra.append(f"median of {r['runs']} runs")
    if r.get("warm_s") is not None:
        extra.append(f"warm-up prepare {r['warm_s']:.2f} s")
    if "first_s" in r:
        extra.append(f"first epoch {r['first_s']:.2f} s")
    if "loader_kb" in r:
        extra.append(f"loader process peak {r['loader_kb'] / 1024:.0f} MB")
    print(
        f"{r['items']:>8} {r['seconds']:>9.2f} {1000 * r['seconds'] / r['items']:>8.3f} "
        f"{r['rss_kb'] / 1024:>14.1f} {store} {r['output_bytes'] / 1e6:>10.2f}  "
        + ", ".join(extra),
        flush=True,
    )


def exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def verdicts(stage: str, rows: list[dict]) -> None:
    """The fitted exponent, the RSS ratio and the per-item ratio, against the targets."""
    counts = [r["items"] for r in rows]
    seconds = [r["seconds"] for r in rows]
    slope = exponent(counts, seconds)
    last = exponent(counts[-2:], seconds[-2:])
    rss_ratio = rows[-1]["rss_kb"] / rows[-2]["rss_kb"]
    per_item = [s / n for s, n in zip(seconds, counts, strict=True)]
    # The reference for the per-item target: the size nearest 4,000 items (the 4k).
    ref = min(range(len(rows) - 1), key=lambda i: abs(math.log(counts[i] / 4000)))
    item_ratio = per_item[-1] / per_item[ref]

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    print(
        f"{stage}: time exponent (seconds vs items): {slope:.3f}  target <= 1.05: "
        f"{verdict(slope <= 1.05)}  (between the two largest sizes: {last:.3f})"
    )
    print(
        f"{stage}: driver RSS largest / second: {rss_ratio:.3f}  target <= 1.1: "
        f"{verdict(rss_ratio <= 1.1)}"
    )
    print(
        f"{stage}: time per item at {counts[-1]} / at {counts[ref]}: {item_ratio:.3f}  "
        f"target within 10 %: {verdict(abs(item_ratio - 1) <= 0.10)}",
        flush=True,
    )
    fixed, marginal = affine(counts, seconds)
    steps = [
        (seconds[i + 1] - seconds[i]) / (counts[i + 1] - counts[i]) for i in range(len(rows) - 1)
    ]
    # A falling time per item is a fixed cost amortising, not growth: the fit says which.
    print(
        f"{stage}: fit seconds = {fixed:.2f} + {1000 * marginal:.3f} ms x items; marginal ms/item "
        f"between successive sizes: {', '.join(f'{1000 * m:.3f}' for m in steps)} (largest "
        f"step / first: {steps[-1] / steps[0]:.2f})",
        flush=True,
    )


def affine(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: the fixed cost ``a`` and the marginal cost ``b``."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return my - b * mx, b


def _sizes(text: str, flag: str) -> list[int]:
    sizes = [int(s) for s in text.split(",")]
    if len(sizes) < 3 or sorted(sizes) != sizes or len(set(sizes)) != len(sizes):
        raise SystemExit(f"{flag}: expected at least three increasing sizes, e.g. 1000,4000,16000")
    return sizes


RUNNERS = {"prepare": stage_prepare, "features": stage_features, "loader": stage_loader}


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        stage, *rest = sys.argv[2:]
        types = {
            "prepare": (str, str, int, int, int, str),
            "features": (str, str, str, int),
            "loader": (str,),
        }[stage]
        values = [t(v) for t, v in zip(types, rest, strict=True)]
        print(json.dumps(CHILDREN[stage](*values)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=",".join(STAGES))
    parser.add_argument("--sizes", default="1000,4000,16000,64000")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument(
        "--warm-images", type=int, default=1000, help="untimed prepare before each (0: none)"
    )
    parser.add_argument("--feature-sizes", default="1000,4000,16000")
    parser.add_argument("--feature-shard-size", type=int, default=500)
    parser.add_argument("--loader-shards", default="16,64,256,1024")
    parser.add_argument("--loader-shard-images", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of a size whose first run is short (3)"
    )
    parser.add_argument(
        "--repeat-under", type=float, default=10.0, help="repeat sizes faster than this (10 s)"
    )
    parser.add_argument("--work", type=Path, default=WORK, help="where inputs are generated")
    parser.add_argument("--clean", action="store_true", help="remove the work folder at the end")
    args = parser.parse_args()
    set_work(args.work)
    if args.warm_images < 0:
        raise SystemExit(f"--warm-images: expected >= 0 (0: no warm-up), got {args.warm_images}")
    stages = [s.strip() for s in args.stage.split(",") if s.strip()]
    unknown = [s for s in stages if s not in RUNNERS]
    if unknown or not stages:
        raise SystemExit(f"--stage: expected some of {','.join(STAGES)}, got {args.stage!r}")
    for stage in stages:
        print(f"\n== {stage} ==", flush=True)
        verdicts(stage, RUNNERS[stage](args))
    if args.clean:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
