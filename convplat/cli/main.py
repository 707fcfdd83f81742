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
from convplat.cli import options
from convplat.cli.ablate import ablate_command
from convplat.cli.features import features_command
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
    voc: Annotated[
        bool, typer.Option("--voc/--no-voc", help="Also write VOCdevkit/VOC2012 (multi-label).")
    ] = True,
) -> None:
    """Write a small learnable synthetic ImageNet-like set (with boxes), a Caltech-like set and
    a PASCAL-VOC-2012-like multi-label set."""
    from convplat.pipeline.demo import make_demo_data

    summary = make_demo_data(
        out=out,
        classes=classes,
        seed=seed,
        layout=layout,
        objects_per_image=objects_per_image,
        voc=voc,
        progress=True,
    )
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


def _given(**values) -> dict:
    """Only the options the user actually passed (None means: keep the recipe's value)."""
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def train(
    model: Annotated[
        str | None,
        typer.Argument(help="alexnet, alexnet_1col, zfnet, overfeat_fast or overfeat_accurate."),
    ] = None,
    data: options.Data = None,
    out: Annotated[str | None, typer.Option(help="Runs directory.")] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config", help="TOML file (or packaged recipe name, e.g. demo) over the recipe."
        ),
    ] = None,
    epochs: options.Epochs = None,
    batch_size: options.BatchSize = None,
    lr: options.Lr = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum (0.9).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay (5e-4).")] = None,
    gpus: options.Gpus = None,
    workers: options.Workers = None,
    resume: Annotated[str | None, typer.Option(help="Continue this run directory.")] = None,
    seed: options.Seed = None,
    amp: options.Amp = None,
    channels_last: Annotated[
        bool | None,
        typer.Option("--channels-last/--no-channels-last", help="channels_last memory format."),
    ] = None,
    compile: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile the model.")
    ] = None,
    address: options.Address = None,
    max_failures: Annotated[int | None, typer.Option(help="Worker restarts allowed.")] = None,
    keep_checkpoints: Annotated[int | None, typer.Option(help="Epoch checkpoints kept.")] = None,
    cpus_per_worker: options.CpusPerWorker = None,
    loader_workers: options.LoaderWorkers = None,
    limit_train_batches: options.LimitTrainBatches = None,
    limit_val_batches: options.LimitValBatches = None,
    run_name: Annotated[str | None, typer.Option(help="Run directory name.")] = None,
) -> None:
    """Train a network on prepared shards with Ray Train (DDP), with the paper's recipe."""
    from convplat.errors import ConfigError
    from convplat.training.recipe import resolve_train_config
    from convplat.training.trainer import fit

    overrides = _given(
        data=data,
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        gpus=gpus,
        workers=workers,
        seed=seed,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        address=address,
        max_failures=max_failures,
        keep_checkpoints=keep_checkpoints,
        cpus_per_worker=cpus_per_worker,
        loader_workers=loader_workers,
        limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches,
        run_name=run_name,
    )
    if resume:
        from convplat.training.trainer import resume_config

        cfg = resume_config(
            resume,
            {k: v for k, v in overrides.items() if k in ("epochs", "address", "max_failures")},
        )
    elif model is None:
        raise ConfigError("expected a MODEL (see `convplat models`) or --resume RUN")
    else:
        cfg = resolve_train_config(model, config, overrides)
    run_dir = fit(cfg, resume=resume)
    console.print(f"run written to {run_dir}")


@app.command()
def evaluate(
    run: Annotated[
        str | None, typer.Argument(help="Run directory (default: the newest under runs/).")
    ] = None,
    mode: Annotated[
        str, typer.Option(help="center, ten-crop or dense (OverFeat multi-scale, whole images).")
    ] = "center",
    data: Annotated[str | None, typer.Option(help="Shards (default: the run's).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    weights: Annotated[str, typer.Option(help="final, best or latest.")] = "final",
    scales: Annotated[
        str,
        typer.Option(
            help="dense: shorter sides or HxW, comma-separated; paper = 245,281,317,389,425,461."
        ),
    ] = "paper",
    stride: Annotated[str, typer.Option(help="dense: fine (offset pooling) or coarse.")] = "fine",
    flip: Annotated[bool, typer.Option(help="dense: also score mirror images.")] = True,
    source: Annotated[
        str,
        typer.Option(
            help="dense: raw (the tree the shards came from), shards (prepared with a large "
            "--size), or a dataset directory."
        ),
    ] = "raw",
) -> None:
    """Top-1/top-5 error of a trained run (centre crop, ten-crop or OverFeat dense)."""
    from convplat.training import evaluate as run_evaluate
    from convplat.training.checkpoints import newest_run

    run = run or newest_run("runs")
    dense = dict(scales=scales, stride=stride, flip=flip, source=source)
    result = run_evaluate(
        run, mode=mode, data=data, split=split, batch_size=batch_size, weights=weights, **dense
    )
    console.print(
        f"{run} ({mode}, {split}, {result['count']} images): "
        f"top-1 error {result['top1_err']:.4f}, top-5 error {result['top5_err']:.4f}",
        markup=False,
    )


@app.command()
def transfer(
    dataset: Annotated[
        str, typer.Argument(help="caltech101, caltech256, voc2012 or folder:PATH.")
    ] = "caltech101",
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
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda if present).")
    ] = None,
) -> None:
    """Freeze an ImageNet model and train new softmax heads with ZFNet's split protocol
    (voc2012: multi-label heads on the devkit's train split, per-class AP on val)."""
    from convplat.transfer import TransferConfig, format_table
    from convplat.transfer import transfer as run_transfer

    values = _given(
        data=data,
        checkpoint=checkpoint,
        runs=runs,
        out=out,
        run_name=run_name,
        modes=mode,
        cuts=cut,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        splits=splits,
        seed=seed,
        augment=augment,
        head_optimizer=head_optimizer,
        weight_decays=weight_decays,
        holdout=holdout,
        head_iters=head_iters,
        voc_loss=voc_loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        extract_batch_size=extract_batch_size,
        background=background,
        cache=cache,
        cache_dir=cache_dir,
        executor=executor,
        ray_min_images=ray_min_images,
        address=address,
        device=device,
    )
    results = run_transfer(TransferConfig(dataset=dataset, **values))
    print(format_table(results))
    print(f"results written to {results['run_dir']}")


visualize_app = typer.Typer(
    help="ZFNet visualisations: deconvnet, occlusion, filters, evolution, correspondence.",
    no_args_is_help=True,
)
app.add_typer(visualize_app, name="visualize")

from convplat.cli.localize import localize_app  # noqa: E402

app.add_typer(localize_app, name="localize")

from convplat.cli.detect import detect_app  # noqa: E402

app.add_typer(detect_app, name="detect")


@visualize_app.command("filters")
def visualize_filters(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    out: Annotated[str | None, typer.Option(help="Output folder (default RUN/visualize).")] = None,
    weights: Annotated[str, typer.Option(help="final, best or latest.")] = "final",
) -> None:
    """First-layer filters as an image grid (PNG)."""
    from convplat.visualize import cli_commands as viz

    print(viz.run_filters(run, out=out, weights=weights))


@visualize_app.command("occlusion")
def visualize_occlusion(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    image: Annotated[str, typer.Argument(help="A raw image file.")],
    size: Annotated[int, typer.Option(help="Grey square side in pixels.")] = 32,
    stride: Annotated[int, typer.Option(help="Step between squares.")] = 8,
    label: Annotated[int | None, typer.Option(help="Correct class (default: predicted).")] = None,
    out: Annotated[str | None, typer.Option(help="Output folder.")] = None,
    weights: Annotated[str, typer.Option(help="final, best or latest.")] = "final",
) -> None:
    """Grey-square occlusion: true-class probability, strongest layer-5 map, top label (PNG)."""
    from convplat.visualize import cli_commands as viz

    print(
        viz.run_occlusion(
            run, image, size=size, stride=stride, label=label, out=out, weights=weights
        )
    )


@visualize_app.command("deconv")
def visualize_deconv(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    layer: Annotated[int, typer.Option(help="Conv layer 1-5.")],
    maps: Annotated[
        str | None, typer.Option(help="Feature maps, e.g. 3,17,40 (default 8 random).")
    ] = None,
    data: Annotated[str | None, typer.Option(help="Shards (default: the run's).")] = None,
    out: Annotated[str | None, typer.Option(help="Output folder.")] = None,
    weights: Annotated[str, typer.Option(help="final, best or latest.")] = "final",
    executor: Annotated[str, typer.Option(help="auto, local or ray (top-9 search).")] = "auto",
    ray_min_images: Annotated[
        int | None, typer.Option(help="With --executor auto, use Ray tasks from this many images.")
    ] = None,
) -> None:
    """Top-9 activations per feature map projected to pixels beside their patches (PNG)."""
    from convplat.visualize import cli_commands as viz

    print(
        viz.run_deconv(
            run,
            layer,
            maps=viz.parse_maps(maps),
            data=data,
            out=out,
            weights=weights,
            executor=executor,
            ray_min_images=ray_min_images,
        )
    )


@visualize_app.command("evolution")
def visualize_evolution(
    run: Annotated[str, typer.Argument(help="Run directory with epoch checkpoints.")],
    layer: Annotated[int, typer.Option(help="Conv layer 1-5.")],
    maps: Annotated[str, typer.Option(help="Feature maps, e.g. 3,17,40.")],
    data: Annotated[str | None, typer.Option(help="Shards (default: the run's).")] = None,
    epochs: Annotated[
        str | None, typer.Option(help="Epochs, e.g. 1,2,5 (default: all saved).")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Output folder.")] = None,
) -> None:
    """The strongest activation's projection per feature map across epoch checkpoints (PNG)."""
    from convplat.visualize import cli_commands as viz

    print(
        viz.run_evolution(
            run, layer, viz.parse_maps(maps), data=data, out=out, epochs=viz.parse_maps(epochs)
        )
    )


app.command("ablate")(ablate_command)
app.command("features")(features_command)


@visualize_app.command("correspondence")
def visualize_correspondence(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    images: Annotated[list[str], typer.Argument(help="Images of one kind of object (paper: 5).")],
    mask: Annotated[
        list[str], typer.Option(help="x,y,w,h of the part: once for all images, or per image.")
    ],
    name: Annotated[str, typer.Option(help="Part name for the output file.")] = "part",
    random_draws: Annotated[int, typer.Option(help="Random-position controls.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random masks.")] = 0,
    coords: Annotated[str, typer.Option(help="image (file pixels) or input (model input).")] = (
        "image"
    ),
    out: Annotated[str | None, typer.Option(help="Output folder.")] = None,
    weights: Annotated[str, typer.Option(help="final, best or latest.")] = "final",
) -> None:
    """ZFNet Table 1: how consistently masking one part changes layers 5 and 7 (JSON)."""
    from convplat.visualize.correspondence import format_correspondence, run_correspondence

    path, result = run_correspondence(
        run, images, mask, name=name, random_draws=random_draws, seed=seed, coords=coords,
        out=out, weights=weights,
    )  # fmt: skip
    print(format_correspondence(result))
    print(f"written to {path}")


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
