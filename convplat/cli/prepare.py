"""`convplat prepare [SOURCE]`: a raw dataset tree -> WebDataset shards, with Ray tasks."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from convplat.cli import options
from convplat.cli.common import announce_cluster, console, given, with_default
from convplat.config import PrepareConfig


def prepare_command(
    source: Annotated[
        str | None,
        typer.Argument(
            help=with_default("Raw dataset tree.", PrepareConfig, "source"), show_default=False
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(help=with_default("Output directory or pyarrow URI.", PrepareConfig, "out")),
    ] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            help=with_default(
                "auto, imagefolder, ilsvrc, caltech101, caltech256 or folder.",
                PrepareConfig,
                "layout",
            )
        ),
    ] = None,
    size: Annotated[
        int | None,
        typer.Option(
            help=with_default("Shorter side (and crop) in pixels.", PrepareConfig, "size")
        ),
    ] = (None),
    quality: Annotated[
        int | None,
        typer.Option(help=with_default("JPEG quality of the shards.", PrepareConfig, "quality")),
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(help=with_default("Samples per shard.", PrepareConfig, "shard_size")),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help=with_default("Seed of the sample-to-shard shuffle.", PrepareConfig, "seed")
        ),
    ] = None,
    crop: Annotated[
        bool | None,
        typer.Option(
            "--crop/--no-crop",
            help="Centre-crop size x size (--no-crop keeps the whole "
            "rescaled image, for dense evaluation).",
        ),
    ] = None,
    address: options.Address = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for a local Ray instance.")] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option(
            "--overwrite/--no-overwrite",
            help="Write into a non-empty directory convplat did not create; its other files are "
            "left alone and a foreign manifest.json is never overwritten.",
        ),
    ] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            help=with_default(
                "Reject images whose header claims more pixels (decompression bombs), before "
                "decoding.",
                PrepareConfig,
                "max_pixels",
            )
        ),
    ] = None,
    max_bytes: Annotated[
        int | None,
        typer.Option(
            help=with_default(
                "Reject image files larger than this, before reading them.",
                PrepareConfig,
                "max_bytes",
            )
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help="auto (Ray with --address or from --ray-min-images images, else local "
            "processes), ray or local."
        ),
    ] = None,
    ray_min_images: Annotated[
        int | None,
        typer.Option(
            help=with_default("With auto, use Ray from this many.", PrepareConfig, "ray_min_images")
        ),
    ] = None,
) -> None:
    """Decode, rescale and centre-crop a raw dataset into WebDataset shards with Ray tasks."""
    values = given(locals())
    from convplat.cli.common import STARTED
    from convplat.pipeline import prepare as run_prepare

    config = PrepareConfig(**values)
    announce_cluster(config.address)
    manifest = run_prepare(config, started=STARTED)
    summary = manifest["summary"]
    table = Table(title=f"prepared {manifest['source']} -> {config.out}")
    for column in ("split", "images", "shards"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, info in manifest["splits"].items():
        table.add_row(split, str(info["count"]), str(len(info["shards"])))
    console.print(table)
    console.print(
        f"{len(manifest['classes'])} classes, {summary['rejected']} rejected "
        f"(rejected.jsonl), {summary['kept']} shards kept from an earlier run, "
        f"{summary['written']} written in {summary['seconds']} s "
        f"({summary['images_per_s']} images/s)"
    )
    if summary["ray_nodes"]:
        console.print(f"shard tasks ran on {summary['ray_nodes']} Ray node(s)")
