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

Usage: python benchmarks/features.py [--images 300] [--model alexnet] [--layer fc7]
       [--repeats 2] [--batch 32]
Images and the run are generated under benchmarks/_work/features/; no network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convplat.features import extract, read_features
from convplat.training.augment import center_window
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.models import create_model
from convplat.transfer.features import (
    FeatureExtractor,
    decode_files,
    decode_pixels,
    load_checkpoint,
    make_transform,
)

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
    args = parser.parse_args()

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
