"""`convplat demo-data`: small deterministic synthetic datasets, so every command runs anywhere."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cli.common import console, given


def demo_data_command(
    out: Annotated[str | None, typer.Option(help="Where to write imagenet/ and caltech101/.")] = (
        None
    ),
    classes: Annotated[int | None, typer.Option(help="ImageNet-like classes (10).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; same seed, same bytes.")] = None,
    layout: Annotated[
        str | None,
        typer.Option(
            help="imagefolder (train/<wnid>, val/<wnid>; default; `folder` also accepted) or "
            "ilsvrc (Kaggle LOC)."
        ),
    ] = None,
    objects_per_image: Annotated[
        int | None, typer.Option(help="Objects drawn per image (detection; 1).")
    ] = None,
    distractors: Annotated[
        int | None,
        typer.Option(
            help="Up to this many unboxed objects of other classes per image "
            "(3 with one object per image, 0 with several; 0: none)."
        ),
    ] = None,
    voc: Annotated[
        bool | None,
        typer.Option("--voc/--no-voc", help="Also write VOCdevkit/VOC2012 (multi-label; on)."),
    ] = None,
) -> None:
    """Write a small learnable synthetic ImageNet-like set (with boxes), a Caltech-like set and
    a PASCAL-VOC-2012-like multi-label set."""
    values = given(locals())
    from convplat.demo import make_demo_data

    summary = make_demo_data(**values, progress=True)
    imagenet, caltech = summary["imagenet"], summary["caltech101"]
    console.print(
        f"{imagenet['path']}: {imagenet['classes']} classes, {imagenet['train']} train + "
        f"{imagenet['val']} val images ({imagenet['layout']} layout, with boxes); "
        f"{caltech['path']}: {caltech['classes']} classes, {caltech['images']} images; "
        f"{summary['seconds']:.1f} s"
    )
    if "voc2012" in summary:
        v = summary["voc2012"]
        console.print(
            f"{v['path']}: {v['classes']} VOC classes, {v['train']} train + {v['val']} val "
            f"images, {v['objects']} objects ({v['difficult']} difficult)"
        )
