"""`convplat visualize ...`: ZFNet's pictures of a trained run (the work is in
:mod:`convplat.visualize.runs` and :mod:`convplat.visualize.correspondence`)."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cli.common import given, parse_ints

visualize_app = typer.Typer(
    help="ZFNet visualisations: deconvnet, occlusion, filters, evolution, correspondence.",
    no_args_is_help=True,
)

Run = Annotated[
    str,
    typer.Argument(
        help="Run directory, or torchvision:alexnet (torchvision's ImageNet weights from the "
        "torch cache)."
    ),
]
Out = Annotated[
    str | None,
    typer.Option(
        help="Output folder (default RUN/visualize; ./visualize-torchvision-alexnet for "
        "torchvision:alexnet)."
    ),
]
Weights = Annotated[str | None, typer.Option(help="final (default), best or latest.")]
Data = Annotated[
    str | None, typer.Option(help="Shards (default: the run's; needed for torchvision:alexnet).")
]
Layer = Annotated[int, typer.Option(help="Conv layer 1-5.")]


@visualize_app.command("filters")
def filters(run: Run, out: Out = None, weights: Weights = None) -> None:
    """First-layer filters as an image grid (PNG)."""
    values = given(locals(), exclude=("run",))
    from convplat.visualize.runs import run_filters

    print(run_filters(run, **values))


@visualize_app.command("occlusion")
def occlusion(
    run: Run,
    image: Annotated[str, typer.Argument(help="A raw image file.")],
    size: Annotated[int | None, typer.Option(help="Grey square side in pixels (32).")] = None,
    stride: Annotated[int | None, typer.Option(help="Step between squares (8).")] = None,
    label: Annotated[int | None, typer.Option(help="Correct class (default: predicted).")] = None,
    out: Out = None,
    weights: Weights = None,
) -> None:
    """Grey-square occlusion: true-class probability, strongest layer-5 map, top label (PNG)."""
    values = given(locals(), exclude=("run", "image"))
    from convplat.visualize.runs import run_occlusion

    print(run_occlusion(run, image, **values))


@visualize_app.command("deconv")
def deconv(
    run: Run,
    layer: Layer,
    maps: Annotated[
        str | None, typer.Option(help="Feature maps, e.g. 3,17,40 (default 8 random).")
    ] = None,
    data: Data = None,
    out: Out = None,
    weights: Weights = None,
    executor: Annotated[
        str | None, typer.Option(help="auto (default), local or ray (top-9 search).")
    ] = None,
    ray_min_images: Annotated[
        int | None, typer.Option(help="With --executor auto, use Ray tasks from this many images.")
    ] = None,
) -> None:
    """Top-9 activations per feature map projected to pixels beside their patches (PNG)."""
    values = given(locals(), exclude=("run", "layer", "maps"))
    from convplat.visualize.runs import run_deconv

    print(run_deconv(run, layer, maps=parse_ints(maps, "--maps"), **values))


@visualize_app.command("evolution")
def evolution(
    run: Annotated[str, typer.Argument(help="Run directory with epoch checkpoints.")],
    layer: Layer,
    maps: Annotated[str, typer.Option(help="Feature maps, e.g. 3,17,40.")],
    data: Data = None,
    epochs: Annotated[
        str | None, typer.Option(help="Epochs, e.g. 1,2,5 (default: all saved).")
    ] = None,
    out: Out = None,
) -> None:
    """The strongest activation's projection per feature map across epoch checkpoints (PNG)."""
    values = given(locals(), exclude=("run", "layer", "maps", "epochs"))
    from convplat.visualize.runs import run_evolution

    print(
        run_evolution(
            run,
            layer,
            parse_ints(maps, "--maps"),
            epochs=parse_ints(epochs, "--epochs"),
            **values,
        )
    )


@visualize_app.command("correspondence")
def correspondence(
    run: Run,
    images: Annotated[list[str], typer.Argument(help="Images of one kind of object (paper: 5).")],
    mask: Annotated[
        list[str], typer.Option(help="x,y,w,h of the part: once for all images, or per image.")
    ],
    name: Annotated[str | None, typer.Option(help="Part name for the output file (part).")] = (
        None
    ),
    random_draws: Annotated[int | None, typer.Option(help="Random-position controls (10).")] = (
        None
    ),
    seed: Annotated[int | None, typer.Option(help="Seed of the random masks.")] = None,
    coords: Annotated[
        str | None, typer.Option(help="image (file pixels, default) or input (model input).")
    ] = None,
    out: Out = None,
    weights: Weights = None,
) -> None:
    """ZFNet Table 1: how consistently masking one part changes layers 5 and 7 (JSON)."""
    values = given(locals(), exclude=("run", "images", "mask"))
    from convplat.visualize.correspondence import format_correspondence, run_correspondence

    path, result = run_correspondence(run, images, mask, **values)
    print(format_correspondence(result))
    print(f"written to {path}")
