"""`convplat localize train|eval RUN`: OverFeat's box regression on a trained run (O §4).

Parse, build a config, make one library call, print a summary; the work is in
:mod:`convplat.localize.localize` and :mod:`convplat.localize.localize_eval`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from convplat.cli import options
from convplat.cli.common import given
from convplat.errors import ConfigError

localize_app = typer.Typer(
    help="OverFeat localization: train the box regressor on a run, then score it.",
    no_args_is_help=True,
)
console = Console()


def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """``"245,281"`` -> ``(245, 281)``; None stays None (the default applies)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{option}: expected at least one value, got {text!r}")
    return values


@localize_app.command("train")
def localize_train(
    run: Annotated[str, typer.Argument(help="Classification run directory.")],
    data: Annotated[
        str | None, typer.Option(help="Shards with boxes (default: the run's).")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output folder (default RUN/localize).")] = None,
    per_class: Annotated[
        bool | None,
        typer.Option(
            "--per-class/--single-class",
            help="One box per class (PCR) instead of one shared box (SCR, the winning entry; "
            "default).",
        ),
    ] = None,
    scales: Annotated[
        str | None, typer.Option(help="Training scales as shorter sides, e.g. 245,281,317.")
    ] = None,
    stride: Annotated[str | None, typer.Option(help="fine (offset pooling) or coarse.")] = None,
    hidden: Annotated[
        str | None, typer.Option(help="Hidden widths of the regressor (paper: 4096,1024).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (3).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size (32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (1e-4).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd.")] = None,
    gpus: Annotated[int | None, typer.Option(help="Ray Train workers with one GPU each.")] = None,
    workers: Annotated[int | None, typer.Option(help="CPU workers when --gpus 0.")] = None,
    loader_workers: options.LoaderWorkers = None,
    weights: Annotated[str | None, typer.Option(help="Run weights: final, best or latest.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    limit_train_batches: Annotated[
        int | None, typer.Option(help="Batches per epoch for a smoke run (0: all).")
    ] = None,
    limit_val_batches: Annotated[
        int | None, typer.Option(help="Validation batches (0: all).")
    ] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite", help="Replace an earlier regressor in the folder."),
    ] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
) -> None:
    """Freeze the run's conv layers and train the box regressor (L2, several scales)."""
    values = given(locals(), exclude=("run",))
    if scales is not None:
        values["scales"] = parse_ints(scales, "--scales")
    if hidden is not None:
        values["hidden"] = parse_ints(hidden, "--hidden")
    from convplat.config.localize import LocalizeConfig
    from convplat.localize.localize import train_localizer

    config = LocalizeConfig(
        run=run,
        **values,
    )
    console.print(f"regressor written to {train_localizer(config)}", markup=False)


@localize_app.command("eval")
def localize_eval(
    run: Annotated[str, typer.Argument(help="Classification run directory.")],
    out: Annotated[
        str | None, typer.Option(help="Localization folder (default RUN/localize).")
    ] = None,
    data: Annotated[str | None, typer.Option(help="Shards (default: training's).")] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate (val).")] = None,
    scales: Annotated[
        str | None, typer.Option(help="Test scales, e.g. 245,281 (default: training's).")
    ] = None,
    stride: Annotated[
        str | None, typer.Option(help="fine or coarse (default: training's).")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Classes kept per scale (O §4 step a; 5).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Greedy-merge threshold t on the match score (0.5).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (16).")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many images (0: all).")] = None,
    samples: Annotated[int | None, typer.Option(help="Images drawn in the PNG (8).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: auto).")] = None,
    loader_workers: options.EvalLoaderWorkers = None,
) -> None:
    """ILSVRC top-1/top-5 localization error, and a PNG of predicted vs true boxes."""
    values = given(locals(), exclude=("run",))
    if scales is not None:
        values["scales"] = parse_ints(scales, "--scales")
    from convplat.localize.localize_eval import evaluate_localizer

    result = evaluate_localizer(
        run,
        **values,
    )
    console.print(
        f"{run} ({result['split']}, {result['count']} images, scales {result['scales']}): "
        f"top-1 localization error {result['top1_loc_err']:.4f}, "
        f"top-5 {result['top5_loc_err']:.4f} (classification {result['top1_cls_err']:.4f} / "
        f"{result['top5_cls_err']:.4f}); boxes drawn in {result['png']}",
        markup=False,
    )
