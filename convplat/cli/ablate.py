"""`convplat ablate VARIANT...`: ZFNet Table 3 - one training job per variant, one table."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cli import options


def ablate_command(
    variants: Annotated[
        list[str],
        typer.Argument(
            help="Models, e.g. zfnet zfnet-no34 zfnet-fc2048 zfnet-b (see `convplat models`), "
            "or table3-zfnet / table3-alexnet for a whole block of Table 3."
        ),
    ],
    config: Annotated[
        str | None,
        typer.Option("--config", help="TOML file or packaged recipe (e.g. demo) for every job."),
    ] = None,
    data: options.Data = None,
    out: Annotated[str, typer.Option(help="Runs directory.")] = "runs",
    name: Annotated[
        str | None, typer.Option(help="Study directory name (default ablate-<stamp>).")
    ] = None,
    parallel: Annotated[
        int, typer.Option(help="Jobs at once, at most (0: as many as the cluster has room for).")
    ] = 0,
    train_error: Annotated[
        bool,
        typer.Option("--train-error/--no-train-error", help="Also evaluate on the train split."),
    ] = True,
    epochs: options.Epochs = None,
    batch_size: options.BatchSize = None,
    lr: options.Lr = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (the same for every job).")] = None,
    gpus: Annotated[int | None, typer.Option(help="GPUs per job.")] = None,
    workers: Annotated[int | None, typer.Option(help="CPU workers per job when --gpus 0.")] = None,
    cpus_per_worker: Annotated[
        int | None, typer.Option(help="CPUs per worker (0: a job takes every CPU).")
    ] = None,
    loader_workers: options.LoaderWorkers = None,
    limit_train_batches: options.LimitTrainBatches = None,
    limit_val_batches: options.LimitValBatches = None,
    amp: options.Amp = None,
    address: options.Address = None,
) -> None:
    """Train architecture variants with one recipe and write the paper-style table (train
    top-1, val top-1, val top-5 error) as Markdown and JSON in OUT/ablate-<stamp>/."""
    from convplat.training.ablate import ablate, format_markdown

    given = dict(
        data=data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        gpus=gpus,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        loader_workers=loader_workers,
        limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches,
        amp=amp,
        address=address,
    )
    table = ablate(
        variants,
        config_file=config,
        overrides={k: v for k, v in given.items() if v is not None},
        out=out,
        name=name,
        parallel=parallel,
        train_error=train_error,
    )
    print(format_markdown(table), end="")
    print(f"table written to {table['dir']}/table.md and table.json ({table['parallel']} at once)")
