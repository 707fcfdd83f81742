"""How `prepare`'s cost and driver memory grow with the dataset (issue 15 §3).

For each size (default 1k, 4k, 16k, 64k generated 320x240 JPEGs, 90 % train / 10 % val), one
fresh driver process starts a local Ray and its workers, then runs `prepare --size 64` through
Ray into a new directory. Printed per size: the prepare wall time (Ray and its workers already
up, so the fixed start-up cost does not hide the growth), the whole driver process's wall
time, time per image, the driver's peak RSS (``ru_maxrss`` of the driver process only), the
Ray object-store peak (the raylet's peak RSS, ``VmHWM``: the plasma store lives in the raylet
and keeps the pages it touched; objects under 100 KB are inlined and never reach it) and the
output size. Then the least-squares exponent of prepare time vs size, the driver RSS ratio between
the largest and the second-largest size, and the targets: exponent <= 1.05, RSS ratio <= 1.1,
per-image time at the largest size within 10 % of the one at the size nearest 4k.

Usage: python benchmarks/scale.py [--sizes 1000,4000,16000,64000] [--image-size 64]
       [--shard-size 500] [--cpus 2]
Source images are 256 distinct photo-like JPEGs, hard-linked under benchmarks/_work/scale/
(decoding cost does not depend on whether two files hold the same bytes); no network.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work" / "scale"
DISTINCT = 256
CLASSES = 10

DRIVER = r"""
import json, os, resource, sys, time
started = time.perf_counter()
from convplat.cluster import ensure_ray
from convplat.config import PrepareConfig
from convplat.pipeline import prepare
source, out, size, shard_size, cpus = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
ensure_ray(num_cpus=cpus)
import ray
from convplat.cluster import fan_out
def warm(_):  # start the Ray workers and their imports before the clock starts
    import convplat.pipeline.shards
    time.sleep(1.0)
list(fan_out(warm, ((i, (i,), {}) for i in range(cpus))))
raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
t0 = time.perf_counter()
manifest = prepare(PrepareConfig(source=source, out=out, size=size, shard_size=shard_size,
                                 num_cpus=cpus, progress=False), executor="ray")
seconds = time.perf_counter() - t0
with open(f"/proc/{raylet}/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({
    "images": manifest["summary"]["images"],
    "prepare_s": seconds,
    "driver_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "raylet_hwm_kb": hwm,
    "process_s": time.perf_counter() - started,
}))
"""


def make_sources(count: int) -> Path:
    """An ImageFolder tree of ``count`` JPEGs (hard links to DISTINCT generated 320x240 ones)."""
    root = WORK / f"raw-{count}"
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
        split = "val" if i % 10 == 9 else "train"
        folder = root / split / f"n{1000 + i % CLASSES:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        os.link(pool / f"{i % DISTINCT}.jpg", folder / f"img_{i}.JPEG")
    (root / "done").write_text("")
    return root


def run_size(count: int, image_size: int, shard_size: int, cpus: int) -> dict:
    source = make_sources(count)
    out = WORK / f"out-{count}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    started = time.perf_counter()
    args = [str(source), str(out), str(image_size), str(shard_size), str(cpus)]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"prepare of {count} images failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    result["output_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out, ignore_errors=True)
    return result


def exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000,64000")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) < 3 or sorted(sizes) != sizes:
        raise SystemExit("--sizes: expected at least three increasing sizes, e.g. 1000,4000,16000")

    print(
        f"prepare --size {args.image_size} --shard-size {args.shard_size}, {args.cpus} CPUs, "
        "320x240 JPEG sources"
    )
    header = (
        f"{'images':>8} {'prepare s':>10} {'process s':>10} {'ms/image':>9} "
        f"{'driver RSS MB':>14} {'store peak MB':>14} {'output MB':>10}"
    )
    print(header)
    rows = []
    for count in sizes:
        r = run_size(count, args.image_size, args.shard_size, args.cpus)
        rows.append(r)
        print(
            f"{r['images']:>8} {r['prepare_s']:>10.2f} {r['process_s']:>10.2f} "
            f"{1000 * r['prepare_s'] / r['images']:>9.3f} {r['driver_rss_kb'] / 1024:>14.1f} "
            f"{r['raylet_hwm_kb'] / 1024:>14.1f} {r['output_bytes'] / 1e6:>10.2f}",
            flush=True,
        )

    counts = [r["images"] for r in rows]
    slope = exponent(counts, [r["prepare_s"] for r in rows])
    last = exponent(counts[-2:], [r["prepare_s"] for r in rows[-2:]])
    rss_ratio = rows[-1]["driver_rss_kb"] / rows[-2]["driver_rss_kb"]
    per_item = [r["prepare_s"] / r["images"] for r in rows]
    # The reference for the per-image target: the size nearest 4,000 images (the 4k).
    ref = min(range(len(rows) - 1), key=lambda i: abs(math.log(counts[i] / 4000)))
    item_ratio = per_item[-1] / per_item[ref]

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    print(
        f"time exponent (prepare s vs images): {slope:.3f}  target <= 1.05: "
        f"{verdict(slope <= 1.05)}  (between the two largest sizes: {last:.3f})"
    )
    print(
        f"driver RSS largest / second: {rss_ratio:.3f}  target <= 1.1: {verdict(rss_ratio <= 1.1)}"
    )
    print(
        f"time per image at {counts[-1]} / at {counts[ref]}: {item_ratio:.3f}  "
        f"target within 10 %: {verdict(abs(item_ratio - 1) <= 0.10)}"
    )


if __name__ == "__main__":
    main()
