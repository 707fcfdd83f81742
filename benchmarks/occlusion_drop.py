"""Does the network look at the object? ZFNet §4.2's occlusion finding, measured on a run.

    python benchmarks/occlusion_drop.py runs/alexnet-<stamp>            # the run's val shards
    python benchmarks/occlusion_drop.py runs/alexnet-<stamp> --size 32  # a smaller square
    python benchmarks/occlusion_drop.py torchvision:alexnet --data SHARDS --limit 100

For every validation image with a box, convplat's grey-square occlusion
(``convplat.visualize.occlusion``, the square at the mean image) maps the true class's
probability; the drop from the unoccluded probability is averaged over the positions where the
square's centre lies in the object's box ("covers") and over those where the square touches no
box ("does not cover"), per image and then over images. ZFNet: "the probability of the correct
class drops significantly when the object is occluded". Three figures must hold (issue 19 §3):

- the ratio covers / does-not-cover >= 3 (the baseline: a network that used the background
  would lose probability off the box too; at or below zero the ratio prints as inf);
- the mean covering drop >= 0.1 in absolute probability: a saturated network (p ~ 0.999)
  drops by ~0.02 on the object and by <= 0 off it, an unbounded ratio for no visible drop;
- paired, per image: in >= 50 % of the images the largest covering drop exceeds the largest
  off-box drop by >= 0.1 (``--margin``), so a few images with large drops cannot carry the mean.

``--per-image`` lists every image's figures. The square's side matters and ZFNet does not give
its own: the demo's labelled objects are 35-70 % of the shorter side (about 90-180 px of the
256 frame), and a 32 px square hides too little of one to cost its shape-and-texture class
much; the default, 64 px, is the demo picture's square (benchmarks/RESULTS.md, "Occlusion drop
on the demo").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from convplat.pipeline.shardset import read_manifest
from convplat.visualize.occlusion import box_drops, occlusion, summarize_drops
from convplat.visualize.runs import load_model, shards_of
from convplat.visualize.search import val_batches

RATIO = 3.0  # covers / does not cover
COVERS = 0.1  # mean covering drop, absolute probability
PAIRED = 0.5  # share of images whose largest covering drop beats their largest off-box one


def read_boxes(shards: str) -> dict[str, tuple[int, list]]:
    """``key -> (label, boxes)`` of the validation samples with at least one box, from
    ``index.parquet`` (boxes in the shard frame's pixels)."""
    import pyarrow.parquet as pq

    from convplat.storage import resolve

    location = resolve(shards)
    with location.fs.open_input_file(location.join("index.parquet")) as handle:
        rows = pq.read_table(handle, columns=["key", "split", "label", "boxes"]).to_pydict()
    return {
        key: (int(label), [tuple(map(float, b)) for b in boxes])
        for key, split, label, boxes in zip(
            rows["key"], rows["split"], rows["label"], rows["boxes"], strict=True
        )
        if split == "val" and boxes
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory or torchvision:alexnet")
    parser.add_argument("--data", help="shards (default: the run's)")
    parser.add_argument("--weights", default="final")
    parser.add_argument("--size", type=int, default=64, help="grey square side (64)")
    parser.add_argument("--stride", type=int, default=16, help="step between squares (16)")
    parser.add_argument("--margin", type=float, default=0.1, help="paired figure's margin (0.1)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--per-image", action="store_true", help="also print each image's key and numbers"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    model, config = load_model(args.run, weights=args.weights)
    shards = shards_of(args.run, config, args.data)
    boxed = read_boxes(shards)
    side = model.input_size
    offset = (int(read_manifest(shards)["size"]) - side) // 2  # the centre crop's corner
    pairs, clean_probs, positions = [], [], [0, 0]
    batches = val_batches(
        shards,
        side,
        16,
        config.get("input_scale", 1.0),
        keys=True,
        mean_rgb=config.get("mean_rgb"),
    )
    for images, keys in batches:
        with torch.inference_mode():
            probs = model(images).softmax(dim=1)
        for image, key, prob in zip(images, keys, probs, strict=True):
            if key not in boxed:
                continue
            label, boxes = boxed[key]
            shifted = [tuple(v - offset for v in box) for box in boxes]  # model-input pixels
            maps = occlusion(model, image, label, size=args.size, stride=args.stride)
            clean = float(prob[label])
            inside, outside = box_drops(maps, clean, shifted)
            if len(inside) and len(outside):
                if args.per_image:
                    print(
                        f"{key} label {label} p {clean:.4f} predicted {int(prob.argmax())} "
                        f"drop covers {inside.mean():+.4f} (max {inside.max():+.4f}) "
                        f"not {outside.mean():+.4f} (max {outside.max():+.4f})"
                    )
                pairs.append((inside, outside))
                clean_probs.append(clean)
                positions[0] += len(inside)
                positions[1] += len(outside)
            if args.limit and len(pairs) >= args.limit:
                break
        if args.limit and len(pairs) >= args.limit:
            break
    if not pairs:
        raise SystemExit("no validation image with a box had squares both on and off its box")

    summary = summarize_drops(pairs, margin=args.margin)
    print(
        f"{args.run}: {summary.images} validation images with boxes, {args.size}x{args.size} "
        f"square, stride {args.stride}; mean true-class probability unoccluded "
        f"{np.mean(clean_probs):.4f}"
    )
    for what, drop, count in (("does not cover the box (baseline)", summary.off, positions[1]),
                              ("covers the box", summary.covers, positions[0])):  # fmt: skip
        print(f"mean drop, square {what}: {drop:+.4f} ({count} squares)")
    print(f"ratio covers / does not cover: {summary.ratio_text} (target >= {RATIO:g}x)")
    print(f"mean covering drop: {summary.covers:.4f} (target >= {COVERS:g})")
    print(
        f"paired: largest covering drop > largest off-box drop + {summary.margin:g} in "
        f"{summary.paired:.0%} of the images (target >= {PAIRED:.0%})"
    )
    missed = summary.shortfalls(RATIO, COVERS, PAIRED)
    print("verdict: " + ("met" if not missed else "missed (" + "; ".join(missed) + ")"))
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
