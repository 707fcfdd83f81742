"""The `convplat` command line: parse, build a config, make one library call, print a summary.

User mistakes (ConvplatError, bad options) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import convplat
from convplat.errors import ConvplatError

app = typer.Typer(
    name="convplat",
    help="Pretrain AlexNet, ZFNet and OverFeat on ImageNet with Ray; study and transfer them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        print(f"convplat {convplat.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """convplat: the classic ImageNet ConvNets as distributed, reproducible software."""


@app.command("demo-data")
def demo_data(
    out: Annotated[str, typer.Option(help="Where to write imagenet/ and caltech101/.")] = "data",
    classes: Annotated[int, typer.Option(help="ImageNet-like classes.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 0,
    layout: Annotated[
        str, typer.Option(help="folder (ImageFolder) or ilsvrc (Kaggle LOC).")
    ] = "folder",
    objects_per_image: Annotated[
        int, typer.Option(help="Objects drawn per image (detection).")
    ] = 1,
) -> None:
    """Write a small learnable synthetic ImageNet-like set (with boxes) and a Caltech-like set."""
    from convplat.pipeline.demo import make_demo_data

    summary = make_demo_data(
        out=out,
        classes=classes,
        seed=seed,
        layout=layout,
        objects_per_image=objects_per_image,
        progress=True,
    )
    imagenet, caltech = summary["imagenet"], summary["caltech101"]
    console.print(
        f"{imagenet['path']}: {imagenet['classes']} classes, {imagenet['train']} train + "
        f"{imagenet['val']} val images ({imagenet['layout']} layout, with boxes); "
        f"{caltech['path']}: {caltech['classes']} classes, {caltech['images']} images; "
        f"{summary['seconds']:.1f} s"
    )


@app.command()
def prepare(
    source: Annotated[str, typer.Argument(help="Raw dataset tree.")] = "data/imagenet",
    out: Annotated[str, typer.Option(help="Output directory or pyarrow URI.")] = "shards/imagenet",
    layout: Annotated[
        str, typer.Option(help="auto, imagefolder, ilsvrc, caltech101, caltech256 or folder.")
    ] = "auto",
    size: Annotated[int, typer.Option(help="Shorter side (and crop) in pixels.")] = 256,
    quality: Annotated[int, typer.Option(help="JPEG quality of the shards.")] = 90,
    shard_size: Annotated[int, typer.Option(help="Samples per shard.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the sample-to-shard shuffle.")] = 0,
    crop: Annotated[
        bool,
        typer.Option(
            "--crop/--no-crop",
            help="Centre-crop size x size (--no-crop keeps the whole "
            "rescaled image, for dense evaluation).",
        ),
    ] = True,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (or RAY_ADDRESS).")
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs for a local Ray instance.")] = None,
) -> None:
    """Decode, rescale and centre-crop a raw dataset into WebDataset shards with Ray tasks."""
    from convplat.config import PrepareConfig
    from convplat.pipeline import prepare as run_prepare

    config = PrepareConfig(
        source=source,
        out=out,
        layout=layout,
        size=size,
        quality=quality,
        shard_size=shard_size,
        seed=seed,
        crop=crop,
        address=address,
        num_cpus=num_cpus,
    )
    manifest = run_prepare(config)
    summary = manifest["summary"]
    table = Table(title=f"prepared {manifest['source']} -> {out}")
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


@app.command()
def models() -> None:
    """List the registered networks: paper, input size, parameters, multiply-adds."""
    from convplat.training.models import describe_models

    table = Table(title="convplat models")
    for column in ("name", "paper", "input", "parameters", "mult-adds"):
        table.add_column(column, justify="left" if column in ("name", "paper") else "right")
    for info in describe_models():
        table.add_row(
            info["name"],
            info["paper"],
            str(info["input_size"]),
            f"{info['parameters']:,}",
            f"{info['macs']:,}",
        )
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the typer app, turning user mistakes into one line and exit 2."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="convplat", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("convplat: aborted", file=sys.stderr)
        return 1
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"convplat: error: {message}".replace("\n", " "), file=sys.stderr)
        return 2
    except ConvplatError as exc:
        print(f"convplat: error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    run()
