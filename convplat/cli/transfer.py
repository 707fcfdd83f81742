"""`convplat transfer DATASET`: ZFNet §5.2's frozen-feature transfer (and its baselines)."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cli import options
from convplat.cli.common import announce_cluster, given


def transfer_command(
    dataset: Annotated[
        str | None,
        typer.Argument(
            help="caltech101 (default), caltech256, voc2012 or folder:PATH.", show_default=False
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Dataset root (default: data/<dataset>; data/VOCdevkit/VOC2012)."),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="Run directory or .safetensors in one (default: the newest run)."),
    ] = None,
    runs: Annotated[str | None, typer.Option(help="Runs directory.")] = None,
    out: Annotated[str | None, typer.Option(help="Where to write the transfer run.")] = None,
    run_name: Annotated[str | None, typer.Option(help="Transfer run directory name.")] = None,
    mode: Annotated[
        str | None,
        typer.Option(help="head (frozen layers 1-7), scratch, full; comma-separated for several."),
    ] = None,
    cut: Annotated[
        str | None,
        typer.Option(help="fc7, fc6 or conv5; comma-separated (ZFNet Table 7: conv5,fc7)."),
    ] = None,
    train_per_class: Annotated[
        str | None,
        typer.Option(help="Training images per class, e.g. 15,30 (Caltech-256: 15,30,45,60)."),
    ] = None,
    test_per_class: Annotated[
        int | None, typer.Option(help="Test images per class, at most.")
    ] = None,
    splits: Annotated[int | None, typer.Option(help="Random splits.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the splits.")] = None,
    augment: Annotated[str | None, typer.Option(help="none or flip (extra features).")] = None,
    head_optimizer: Annotated[str | None, typer.Option(help="lbfgs or sgd.")] = None,
    weight_decays: Annotated[
        str | None,
        typer.Option(help="Weight-decay grid chosen on a held-out part of each train split."),
    ] = None,
    holdout: Annotated[
        float | None, typer.Option(help="Held-out fraction for that choice.")
    ] = None,
    head_iters: Annotated[int | None, typer.Option(help="Head optimizer iterations.")] = None,
    voc_loss: Annotated[
        str | None, typer.Option(help="voc2012 multi-label loss: sigmoid or softmax.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs for scratch/full.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch for scratch/full.")] = None,
    lr: Annotated[float | None, typer.Option(help="Adam lr for scratch/full.")] = None,
    extract_batch_size: Annotated[
        int | None, typer.Option(help="Feature-extraction batch.")
    ] = None,
    background: Annotated[
        bool | None,
        typer.Option("--background/--no-background", help="Keep BACKGROUND_Google / 257.clutter."),
    ] = None,
    cache: Annotated[
        bool | None, typer.Option("--cache/--no-cache", help="Reuse cached features.")
    ] = None,
    cache_dir: Annotated[str | None, typer.Option(help="Feature cache directory.")] = None,
    executor: Annotated[str | None, typer.Option(help="auto, local or ray.")] = None,
    ray_min_images: Annotated[
        int | None, typer.Option(help="With --executor auto, use Ray tasks from this many images.")
    ] = None,
    address: options.Address = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).")
    ] = None,
) -> None:
    """Freeze an ImageNet model and train new softmax heads with ZFNet's split protocol
    (voc2012: multi-label heads on the devkit's train split, per-class AP on val)."""
    values = given(locals(), rename={"mode": "modes", "cut": "cuts"})
    from convplat.transfer import TransferConfig, format_table
    from convplat.transfer import transfer as run_transfer

    config = TransferConfig(**values)
    if config.executor != "local":
        announce_cluster(config.address)
    results = run_transfer(config)
    print(format_table(results))
    print(f"results written to {results['run_dir']}")
