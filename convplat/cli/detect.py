"""`convplat detect train RUN` and `convplat detect eval RUN`: OverFeat detection (O §5)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from convplat.cli import options
from convplat.cli.common import given
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
    out: Annotated[str | None, typer.Option(help="Runs directory (runs).")] = None,
    run_name: Annotated[str | None, typer.Option(help="Detection run directory name.")] = None,
    weights: Annotated[str | None, typer.Option(help="final, best or latest of RUN.")] = None,
    scales: Annotated[
        str | None, typer.Option(help="Shorter image sides in pixels, comma-separated (256,384).")
    ] = None,
    stride: Annotated[str | None, typer.Option(help="coarse or fine (offset pooling).")] = None,
    trainable: Annotated[
        str | None, typer.Option(help="classifier (fc6-fc8) or output (fc8 only).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (2).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global images per step (8).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (1e-4).")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum (0.9).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay (0).")] = None,
    positive_iou: Annotated[
        float | None, typer.Option(help="Window-box IoU for an object (0.5).")
    ] = None,
    negative_iou: Annotated[
        float | None, typer.Option(help="Best IoU below this: background (0.3).")
    ] = None,
    random_negatives: Annotated[
        int | None, typer.Option(help="Random negatives per image/scale (2).")
    ] = None,
    hard_negatives: Annotated[
        int | None, typer.Option(help="Most offending negatives per image/scale (2).")
    ] = None,
    flip: Annotated[
        bool | None, typer.Option("--flip/--no-flip", help="Random mirror images (on).")
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="Ray Train workers with one GPU each.")] = None,
    workers: Annotated[int | None, typer.Option(help="CPU workers when --gpus 0.")] = None,
    cpus_per_worker: Annotated[int | None, typer.Option(help="CPUs per worker (0: even).")] = None,
    loader_workers: options.LoaderWorkers = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    limit_train_batches: Annotated[
        int | None, typer.Option(help="Steps per epoch for a smoke run (0: all).")
    ] = None,
    max_failures: Annotated[int | None, typer.Option(help="Worker restarts allowed.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
) -> None:
    """Train the classifier spatially with a background class on frozen conv layers."""
    values = given(locals(), exclude=("run",))
    if scales is not None:
        values["scales"] = parse_scales(scales)
    from convplat.config.localize import DetectConfig
    from convplat.localize.detect import train_detector

    config = DetectConfig(
        run=run,
        **values,
    )
    console.print(f"detection run written to {train_detector(config)}", markup=False)


@detect_app.command("eval")
def evaluate(
    run: Annotated[str, typer.Argument(help="Detection run (from `convplat detect train`).")],
    data: Annotated[str | None, typer.Option(help="Shards (default: the run's).")] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate (val).")] = None,
    scales: Annotated[
        str | None, typer.Option(help="Shorter sides, comma-separated (default: training's).")
    ] = None,
    stride: Annotated[
        str | None, typer.Option(help="coarse or fine (default: training's).")
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(help="Least object probability a window needs to propose a box (0.5)."),
    ] = None,
    merge_threshold: Annotated[
        float | None, typer.Option(help="Greedy-merge threshold t (match score; 0.6).")
    ] = None,
    weights: Annotated[str | None, typer.Option(help="final or latest (final).")] = None,
    limit: Annotated[
        int | None, typer.Option(help="Evaluate only this many images (0: all).")
    ] = None,
    pictures: Annotated[int | None, typer.Option(help="Images drawn in the PNG (6).")] = None,
    loader_workers: options.EvalLoaderWorkers = None,
    regressor: Annotated[
        str | None,
        typer.Option(
            help="Boxes from a trained localization regressor (a `localize train` output dir, "
            "e.g. RUN/localize; 'auto': the source run's if trained) instead of the windows."
        ),
    ] = None,
) -> None:
    """mAP and per-class AP (IoU >= 0.5) with dense multi-scale inference; JSON and PNG."""
    values = given(locals(), exclude=("run",))
    if scales is not None:
        values["scales"] = parse_scales(scales)
    from convplat.localize.detect_eval import evaluate_detector

    result = evaluate_detector(
        run,
        **values,
    )
    table = Table(title=f"detection AP ({result['split']}, {result['images']} images, IoU >= 0.5)")
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
