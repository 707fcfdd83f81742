"""`convplat evaluate RUN`: top-1/top-5 error of a trained run."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cli import options
from convplat.cli.common import console, defaults, given


def evaluate_command(
    run: Annotated[
        str | None, typer.Argument(help="Run directory (default: the newest under runs/).")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="center (default), ten-crop or dense (OverFeat multi-scale)."),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Shards (default: the run's).")] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate (val).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (64).")] = None,
    weights: Annotated[str | None, typer.Option(help="final (default), best or latest.")] = None,
    scales: Annotated[
        str | None,
        typer.Option(
            help="dense: shorter sides or HxW, comma-separated; paper (default) = "
            "245,281,317,389,425,461."
        ),
    ] = None,
    stride: Annotated[
        str | None, typer.Option(help="dense: fine (offset pooling, default) or coarse.")
    ] = None,
    flip: Annotated[
        bool | None, typer.Option("--flip/--no-flip", help="dense: also score mirror images.")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="dense: raw (default: the tree the shards came from), shards (prepared with a "
            "large --size), or a dataset directory."
        ),
    ] = None,
    loader_workers: options.EvalLoaderWorkers = None,
) -> None:
    """Top-1/top-5 error of a trained run (centre crop, ten-crop or OverFeat dense)."""
    values = given(locals(), exclude=("run",), rename={"loader_workers": "num_workers"})
    from convplat.training import evaluate as run_evaluate
    from convplat.training.checkpoints import newest_run

    run = run or newest_run("runs")
    result = run_evaluate(run, **values)
    shown = {**defaults(run_evaluate), **values}
    console.print(
        f"{run} ({shown['mode']}, {shown['split']}, {result['count']} images): "
        f"top-1 error {result['top1_err']:.4f}, top-5 error {result['top5_err']:.4f}",
        markup=False,
    )
