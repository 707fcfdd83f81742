"""`convplat transfer DATASET`: ZFNet §5.2's frozen-feature transfer (and its baselines)."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cli import options
from convplat.cli.common import announce_cluster, given, with_default
from convplat.config import TransferConfig


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
    runs: Annotated[
        str | None, typer.Option(help=with_default("Runs directory.", TransferConfig, "runs"))
    ] = None,
    out: Annotated[str | None, typer.Option(help="Where to write the transfer run.")] = None,
    run_name: Annotated[str | None, typer.Option(help="Transfer run directory name.")] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                "head (frozen layers 1-7), scratch, full; comma-separated for several.",
                TransferConfig,
                "modes",
            )
        ),
    ] = None,
    cut: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                "fc7, fc6 or conv5; comma-separated (ZFNet Table 7: conv5,fc7).",
                TransferConfig,
                "cuts",
            )
        ),
    ] = None,
    train_per_class: Annotated[
        str | None,
        typer.Option(help="Training images per class, e.g. 15,30 (Caltech-256: 15,30,45,60)."),
    ] = None,
    test_per_class: Annotated[
        int | None,
        typer.Option(
            help=with_default("Test images per class, at most.", TransferConfig, "test_per_class")
        ),
    ] = None,
    splits: Annotated[
        int | None, typer.Option(help=with_default("Random splits.", TransferConfig, "splits"))
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=with_default("Seed of the splits.", TransferConfig, "seed"))
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option(
            help=with_default("none or flip (extra features).", TransferConfig, "augment")
        ),
    ] = None,
    head_optimizer: Annotated[
        str | None,
        typer.Option(help=with_default("lbfgs or sgd.", TransferConfig, "head_optimizer")),
    ] = None,
    weight_decays: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                "Weight-decay grid chosen on a held-out part of each train split.",
                TransferConfig,
                "weight_decays",
            )
        ),
    ] = None,
    holdout: Annotated[
        float | None,
        typer.Option(
            help=with_default("Held-out fraction for that choice.", TransferConfig, "holdout")
        ),
    ] = None,
    head_iters: Annotated[
        int | None,
        typer.Option(help=with_default("Head optimizer iterations.", TransferConfig, "head_iters")),
    ] = None,
    voc_loss: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                "voc2012 multi-label loss: sigmoid or softmax.", TransferConfig, "voc_loss"
            )
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help=with_default("Epochs for scratch/full.", TransferConfig, "epochs")),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help=with_default("Batch for scratch/full.", TransferConfig, "batch_size")),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help=with_default("Adam lr for scratch/full.", TransferConfig, "lr")),
    ] = None,
    extract_batch_size: Annotated[
        int | None,
        typer.Option(
            help=with_default("Feature-extraction batch.", TransferConfig, "extract_batch_size")
        ),
    ] = None,
    background: Annotated[
        bool | None,
        typer.Option(
            "--background/--no-background",
            help=with_default(
                "Keep BACKGROUND_Google / 257.clutter.", TransferConfig, "background"
            ),
        ),
    ] = None,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache",
            help=with_default("Reuse cached features.", TransferConfig, "cache"),
        ),
    ] = None,
    cache_dir: Annotated[str | None, typer.Option(help="Feature cache directory.")] = None,
    executor: Annotated[
        str | None,
        typer.Option(help=with_default("auto, local or ray.", TransferConfig, "executor")),
    ] = None,
    ray_min_images: Annotated[
        int | None,
        typer.Option(
            help=with_default(
                "With --executor auto, use Ray tasks from this many images.",
                TransferConfig,
                "ray_min_images",
            )
        ),
    ] = None,
    address: options.Address = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).")
    ] = None,
) -> None:
    """Freeze an ImageNet model and train new softmax heads with ZFNet's split protocol
    (voc2012: multi-label heads on the devkit's train split, per-class AP on val)."""
    values = given(locals(), rename={"mode": "modes", "cut": "cuts"})
    from convplat.transfer import format_table
    from convplat.transfer import transfer as run_transfer

    config = TransferConfig(**values)
    if config.executor != "local":
        announce_cluster(config.address)
    results = run_transfer(config)
    print(format_table(results))
    print(f"results written to {results['run_dir']}")
