"""`convplat features RUN SOURCE --layer fc7`: a layer's activations for every image, streamed to
a directory of Parquet files."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cluster import RAY_MIN_IMAGES


def features_command(
    run: Annotated[str, typer.Argument(help="Run directory (or a .safetensors file in one).")],
    source: Annotated[
        str, typer.Argument(help="Shard directory (from `convplat prepare`) or a folder of images.")
    ],
    layer: Annotated[
        str,
        typer.Option(
            help="conv1..conv5 (after ReLU, pool and norm), fc6, fc7 (after ReLU), fc8 or logits."
        ),
    ] = "fc7",
    out: Annotated[
        str | None,
        typer.Option(
            help="Directory of Parquet parts (default RUN/features/<source>-<layer>.parquet; "
            "torchvision:alexnet: ./features-torchvision-alexnet/…)."
        ),
    ] = None,
    pool: Annotated[
        str, typer.Option(help="Conv layers: flatten (C*h*w), avg or max (one value per map).")
    ] = "flatten",
    split: Annotated[str, typer.Option(help="Shards: all, train, val or a comma list.")] = "all",
    layout: Annotated[str, typer.Option(help="Folders: auto or a `prepare` layout.")] = "auto",
    executor: Annotated[
        str, typer.Option(help="auto (Ray from --ray-min-images), local or ray.")
    ] = "auto",
    ray_min_images: Annotated[
        int, typer.Option(help="With auto, use Ray from this many images.")
    ] = RAY_MIN_IMAGES,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).")
    ] = None,
) -> None:
    """Extract any layer's activations (OverFeat's feature extractor) to Parquet: key, label,
    vector. Ray tasks per shard or chunk of files, each writing its own part (driver memory does
    not grow with the images); the same code as transfer's feature cache."""
    from convplat.export import extract

    summary = extract(
        run,
        source,
        layer=layer,
        out=out,
        pool=pool,
        split=split,
        layout=layout,
        executor=executor,
        ray_min_images=ray_min_images,
        address=address,
        batch_size=batch_size,
        device=device,
    )
    rejected = summary["rejected"]
    note = (
        f", {len(rejected)} rejected (e.g. {rejected[0][0]}: {rejected[0][1]})" if rejected else ""
    )
    where = summary["executor"]
    if summary["ray_nodes"]:
        where += f" on {summary['ray_nodes']} node(s)"
    print(
        f"{summary['rows']} x {summary['dim']} {summary['layer']} features -> {summary['out']} "
        f"({where}, {summary['seconds']:.1f} s{note})"
    )
