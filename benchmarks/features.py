"""Benchmark `convplat features`: images/s of a plain in-process loop vs Ray tasks on 1 and 2 CPUs.

All paths extract the same layer of the same random-init run for the same folder of generated
JPEGs (decode, shorter side 256, centre crop, JPEG q90, then the model's centre 224 crop,
mean-image window, forward):

(a) baseline, a plain loop a user would write: batches of 32 files -> ``decode_files`` ->
    ``decode_pixels`` -> crop -> ``make_transform`` -> ``FeatureExtractor`` (torch's default
    threads, all cores); (a1) the same with one torch thread, as each Ray task runs;
(b) ``convplat features --executor local`` (the same work in-process, written to Parquet);
(c) ``convplat features --executor ray`` on a local Ray started with 1 CPU, then 2 CPUs: chunks
    of files per task, one model build per task, 1 CPU (and 1 torch thread) per task.

Ray is timed warm (after one untimed run with the same Ray instance: worker processes up,
torch imported) and, on the first run only, cold. The best of ``--repeats`` is reported.

``--streaming`` instead compares the output paths on two sizes (``--sizes 400,1600``), each
run in a fresh process so its peak RSS (``ru_maxrss``) is the driver's alone:
(old) the path before streaming, rebuilt here from the same functions: every vector gathered
on the driver, concatenated, and written as one Parquet file through an in-memory buffer;
(new) ``convplat features``: every chunk written as its own part when it is done. Both run
in-process (``--executor local``: the driver also holds the model, the same for both), on a
wide layer (default ``conv2``, 43,264 floats per image) so the vectors dominate.

Usage: python benchmarks/features.py [--images 300] [--model alexnet] [--layer fc7]
       [--repeats 2] [--batch 32]
       python benchmarks/features.py --streaming [--sizes 400,1600] [--layer conv2]
Images and the run are generated under benchmarks/_work/features/; no network.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convplat.export import extract, read_features
from convplat.training.augment import center_window
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.models import create_model
from convplat.transfer.checkpoint import load_checkpoint
from convplat.transfer.extract import decode_files, decode_pixels, extract_chunk, make_transform
from convplat.transfer.extractor import FeatureExtractor

WORK = Path(__file__).resolve().parent / "_work" / "features"


def make_workspace(images: int, model_name: str) -> tuple[Path, Path]:
    """A folder of small photo-like JPEGs and a hand-made run (config, weights, mean image)."""
    if WORK.exists():
        shutil.rmtree(WORK)
    folder = WORK / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        w, h = int(rng.integers(160, 320)), int(rng.integers(120, 240))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        rgb = [
            128 + 60 * np.sin(x / rng.uniform(10, 40) + c) + 40 * np.cos(y / 23) for c in range(3)
        ]
        pixels = np.clip(np.stack(rgb, -1) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:05d}.jpg", quality=90)
    shards = WORK / "shards"
    shards.mkdir()
    np.savez(
        shards / "stats.npz",
        mean=(120 + 10 * rng.random((256, 256, 3))).astype(np.float32),
        rgb_mean=np.array([120.0, 121.0, 122.0], np.float32),
        eigval=np.ones(3, np.float32),
        eigvec=np.eye(3, dtype=np.float32),
    )
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=1000)
    run = WORK / "runs" / f"{model_name}-bench"
    run.mkdir(parents=True)
    config = {"model": model_name, "num_classes": 1000, "data": str(shards), "input_scale": 1 / 64}
    (run / "config.json").write_text(json.dumps(config))
    (run / "model.safetensors").write_bytes(state_dict_bytes(model))
    return folder, run


def plain_loop(folder: Path, run: Path, layer: str, batch: int) -> np.ndarray:
    """(a): the straightforward in-process loop."""
    checkpoint = load_checkpoint(str(run))
    model = checkpoint.build()
    extractor = FeatureExtractor(model, (layer,), last_conv_alias=False)
    mean = np.load(Path(checkpoint.data) / "stats.npz")["mean"]
    transform = make_transform(mean, checkpoint.input_scale)
    top, left, _ = center_window(256, 256, model.input_size)
    crop = model.input_size
    paths = sorted(str(p) for p in folder.iterdir())
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            jpegs, _ = decode_files(paths[start : start + batch])
            pixels = decode_pixels([j for j in jpegs if j is not None])
            crops = torch.from_numpy(pixels[:, top : top + crop, left : left + crop])
            windows = torch.tensor([[top, left, 0]] * len(crops))
            out.append(extractor(transform(crops, windows, lighting=False)).numpy())
    return np.concatenate(out)


def gathered_export(folder: Path, run: Path, layer: str, batch: int, out: Path) -> int:
    """(old): the export before streaming - every chunk's vectors kept on the driver, then one
    concatenated array, one Arrow table and one in-memory Parquet buffer written at the end."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    checkpoint = load_checkpoint(str(run))
    mean = np.load(Path(checkpoint.data) / "stats.npz")["mean"]
    paths = sorted(str(p) for p in folder.iterdir())
    keys, parts = [], []
    for start in range(0, len(paths), 256):  # the old in-process chunk
        chunk = paths[start : start + 256]
        result = extract_chunk(
            chunk,
            model_name=checkpoint.model,
            num_classes=checkpoint.num_classes,
            weights=checkpoint.weights,
            mean=mean,
            input_scale=checkpoint.input_scale,
            cuts=(layer,),
            flip=False,
            size=256,
            quality=90,
            batch_size=batch,
            keep_jpegs=False,
            pool="flatten",
            last_conv_alias=False,
        )
        keys += [Path(p).stem for p, r in zip(chunk, result["reasons"], strict=True) if r is None]
        parts.append(result["features"][layer][0])
    vectors = np.concatenate(parts)  # (N, dim)
    n, dim = vectors.shape
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "label": pa.array([-1] * n, pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    out.write_bytes(buffer.getvalue())
    return n


def streaming_child(path: str, images: int, layer: str, batch: int) -> None:
    """One measurement in this fresh process: print {seconds, rss_mb, rows} as JSON."""
    folder = WORK / f"images-{images}"
    run = next((WORK / "runs").iterdir())
    out = WORK / f"{path}-{images}.parquet"
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    started = time.perf_counter()
    if path == "old":
        rows = gathered_export(folder, run, layer, batch, out)
    else:
        rows = extract(
            str(run),
            str(folder),
            layer=layer,
            out=str(out),
            executor="local",
            batch_size=batch,
            device="cpu",
            progress=False,
        )["rows"]
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb, "rows": rows}))


def streaming_compare(sizes: list[int], model: str, layer: str, batch: int) -> None:
    """Old vs new output path on two sizes: driver peak RSS and time, each in a new process."""
    folder, _ = make_workspace(max(sizes), model)
    files = sorted(folder.iterdir())
    for size in sizes:
        subset = WORK / f"images-{size}"
        subset.mkdir()
        for f in files[:size]:
            (subset / f.name).symlink_to(f)
    with torch.device("meta"):
        from convplat.transfer.extractor import layer_dims

        dim = layer_dims(create_model(model), (layer,), last_conv_alias=False)[layer]
    print(f"{model} {layer} ({dim} floats = {dim * 4 / 1024:.0f} KiB per image), in-process")
    print(f"{'path':6s} {'images':>7s} {'seconds':>8s} {'images/s':>9s} {'peak RSS MB':>12s}")
    results: dict[tuple[str, int], dict] = {}
    for size in sizes:
        for path in ("old", "new"):
            command = [sys.executable, __file__, "--child", path, "--images", str(size)]
            command += ["--layer", layer, "--batch", str(batch)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[path, size] = result
            print(
                f"{path:6s} {size:7d} {result['seconds']:8.2f} "
                f"{size / result['seconds']:9.1f} {result['rss_mb']:12.0f}"
            )
    small, large = sizes[0], sizes[-1]
    for path in ("old", "new"):
        grow = results[path, large]["rss_mb"] - results[path, small]["rss_mb"]
        print(
            f"{path}: driver RSS {large} vs {small} images: "
            f"{results[path, large]['rss_mb'] / results[path, small]['rss_mb']:.2f}x "
            f"(+{grow:.0f} MB; the vectors of the extra images are "
            f"{(large - small) * dim * 4 / 2**20:.0f} MB)"
        )
    ratio = results["new", large]["seconds"] / results["old", large]["seconds"]
    print(f"time new / old at {large} images: {ratio:.2f}x")


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--layer", default="fc7")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--streaming", action="store_true", help="old vs new output path")
    parser.add_argument("--sizes", default="400,1600", help="with --streaming: two sizes")
    parser.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        streaming_child(args.child, args.images, args.layer, args.batch)
        return
    if args.streaming:
        layer = "conv2" if args.layer == "fc7" else args.layer
        sizes = [int(s) for s in args.sizes.split(",")]
        streaming_compare(sizes, args.model, layer, args.batch)
        return

    import ray

    from convplat.cluster import ensure_ray

    folder, run = make_workspace(args.images, args.model)
    n = args.images
    print(
        f"{n} JPEGs, {args.model} {args.layer}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, "
        f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    rows: list[tuple[str, float, str]] = []

    best = min(
        timed(lambda: plain_loop(folder, run, args.layer, args.batch))[0]
        for _ in range(args.repeats)
    )
    reference = plain_loop(folder, run, args.layer, args.batch)
    rows.append(("(a) plain in-process loop", best, ""))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray task gets: on a busy machine, often faster
    best = min(
        timed(lambda: plain_loop(folder, run, args.layer, args.batch))[0]
        for _ in range(args.repeats)
    )
    torch.set_num_threads(threads)
    rows.append(("(a1) plain loop, 1 torch thread", best, ""))

    def via(executor: str, out: str) -> dict:
        return extract(
            str(run),
            str(folder),
            layer=args.layer,
            out=str(WORK / out),
            executor=executor,
            batch_size=args.batch,
            device="cpu",
            progress=False,
        )

    best = min(timed(lambda: via("local", "local.parquet"))[0] for _ in range(args.repeats))
    rows.append(("(b) convplat features, local", best, ""))
    for cpus in (1, 2):
        ensure_ray(num_cpus=cpus)
        name = f"ray{cpus}.parquet"
        cold, _ = timed(lambda name=name: via("ray", name))
        best = min(timed(lambda name=name: via("ray", name))[0] for _ in range(args.repeats))
        rows.append(
            (
                f"(c) convplat features, Ray {cpus} CPU{'s' if cpus > 1 else ''}",
                best,
                f"cold {n / cold:.1f} images/s",
            )
        )
        ray.shutdown()
        got = read_features(str(WORK / f"ray{cpus}.parquet"))["vectors"]
        diff = float(np.abs(got - reference).max())
        assert diff < 1e-3 * max(1.0, float(np.abs(reference).max())), diff
    local = read_features(str(WORK / "local.parquet"))["vectors"]
    print(f"max |difference| vs (a): local {float(np.abs(local - reference).max()):.2e}")

    base = n / rows[0][1]
    print(f"{'path':40s} {'seconds':>8s} {'images/s':>9s} {'vs (a)':>7s}  notes")
    for name, seconds, note in rows:
        rate = n / seconds
        print(f"{name:40s} {seconds:8.2f} {rate:9.1f} {rate / base:6.2f}x  {note}")
    one, two = (n / rows[i][1] for i in (3, 4))
    print(f"Ray 2 CPUs / Ray 1 CPU: {two / one:.2f}x")
    print(f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
