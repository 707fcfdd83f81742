"""`convplat detect train RUN` and `convplat detect eval RUN`: OverFeat detection (O §5)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from convplat.errors import ConfigError

detect_app = typer.Typer(
    help="OverFeat detection: a background class, negatives mined on the fly, mAP.",
    no_args_is_help=True,
)
console = Console()


def parse_scales(text: str | None) -> tuple[int, ...] | None:
    """``"256,384"`` -> (256, 384); None stays None (the default)."""
    if text is None:
        return None
    try:
        scales = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--scales: expected shorter sides like 256,384, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise ConfigError(f"--scales: expected positive sides like 256,384, got {text!r}")
    return scales


@detect_app.command("train")
def train(
    run: Annotated[str, typer.Argument(help="Classification run whose conv layers are frozen.")],
    data: Annotated[str | None, typer.Option(help="Shards (default: the run's).")] = None,
    out: Annotated[str, typer.Option(help="Runs directory.")] = "runs",
    run_name: Annotated[str | None, typer.Option(help="Detection run directory name.")] = None,
    weights: Annotated[str, typer.Option(help="final, best or latest of RUN.")] = "final",
    scales: Annotated[
        str, typer.Option(help="Shorter image sides in pixels, comma-separated.")
    ] = "256,384",
    stride: Annotated[str, typer.Option(help="coarse or fine (offset pooling).")] = "coarse",
    trainable: Annotated[
        str, typer.Option(help="classifier (fc6-fc8) or output (fc8 only).")
    ] = "classifier",
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 2,
    batch_size: Annotated[int, typer.Option(help="Global images per step.")] = 8,
    optimizer: Annotated[str, typer.Option(help="adam or sgd.")] = "adam",
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = 0.0,
    positive_iou: Annotated[float, typer.Option(help="Window-box IoU for an object.")] = 0.5,
    negative_iou: Annotated[float, typer.Option(help="Best IoU below this: background.")] = 0.3,
    random_negatives: Annotated[int, typer.Option(help="Random negatives per image/scale.")] = 2,
    hard_negatives: Annotated[
        int, typer.Option(help="Most offending negatives per image/scale.")
    ] = 2,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random mirror images.")] = True,
    gpus: Annotated[int, typer.Option(help="Ray Train workers with one GPU each.")] = 0,
    workers: Annotated[int, typer.Option(help="CPU workers when --gpus 0.")] = 1,
    cpus_per_worker: Annotated[int, typer.Option(help="CPUs per worker (0: even).")] = 0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    limit_train_batches: Annotated[
        int, typer.Option(help="Steps per epoch for a smoke run (0: all).")
    ] = 0,
    max_failures: Annotated[int, typer.Option(help="Worker restarts allowed.")] = 2,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
) -> None:
    """Train the classifier spatially with a background class on frozen conv layers."""
    from convplat.localize.detect import DetectConfig, train_detector

    config = DetectConfig(
        run=run,
        data=data or "",
        out=out,
        run_name=run_name or "",
        weights=weights,
        scales=parse_scales(scales),
        stride=stride,
        trainable=trainable,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        positive_iou=positive_iou,
        negative_iou=negative_iou,
        random_negatives=random_negatives,
        hard_negatives=hard_negatives,
        flip=flip,
        gpus=gpus,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        seed=seed,
        limit_train_batches=limit_train_batches,
        max_failures=max_failures,
        address=address,
    )
    console.print(f"detection run written to {train_detector(config)}", markup=False)


@detect_app.command("eval")
def evaluate(
    run: Annotated[str, typer.Argument(help="Detection run (from `convplat detect train`).")],
    data: Annotated[str | None, typer.Option(help="Shards (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    scales: Annotated[
        str | None, typer.Option(help="Shorter sides, comma-separated (default: training's).")
    ] = None,
    stride: Annotated[
        str | None, typer.Option(help="coarse or fine (default: training's).")
    ] = None,
    score_threshold: Annotated[
        float, typer.Option(help="Least object probability a window needs to propose a box.")
    ] = 0.5,
    merge_threshold: Annotated[
        float, typer.Option(help="Greedy-merge threshold t (match score).")
    ] = 0.6,
    weights: Annotated[str, typer.Option(help="final or latest.")] = "final",
    limit: Annotated[int, typer.Option(help="Evaluate only this many images (0: all).")] = 0,
    pictures: Annotated[int, typer.Option(help="Images drawn in the PNG.")] = 6,
    regressor: Annotated[
        str | None,
        typer.Option(
            help="Boxes from a trained localization regressor (a `localize train` output dir, "
            "e.g. RUN/localize; 'auto': the source run's if trained) instead of the windows."
        ),
    ] = None,
) -> None:
    """mAP and per-class AP (IoU >= 0.5) with dense multi-scale inference; JSON and PNG."""
    from convplat.localize.detect import evaluate_detector

    result = evaluate_detector(
        run,
        data=data,
        split=split,
        scales=parse_scales(scales),
        stride=stride,
        score_threshold=score_threshold,
        merge_threshold=merge_threshold,
        weights=weights,
        limit=limit,
        pictures=pictures,
        regressor=regressor,
    )
    table = Table(title=f"detection AP ({split}, {result['images']} images, IoU >= 0.5)")
    for column in ("class", "AP", "positives", "detections", "hits"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in result["per_class"]:
        ap = "-" if row["ap"] is None else f"{row['ap']:.4f}"
        name = row["wnid"] if row["name"] in ("", row["wnid"]) else f"{row['wnid']} {row['name']}"
        table.add_row(name, ap, str(row["positives"]), str(row["detections"]), str(row["hits"]))
    console.print(table)
    mean = "undefined (no ground-truth boxes)" if result["map"] is None else f"{result['map']:.4f}"
    console.print(
        f"mAP {mean}; boxes: {result['boxes']}; picture {result['picture']}", markup=False
    )
