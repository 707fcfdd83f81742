"""`convplat train MODEL`: the paper's recipe on prepared shards with Ray Train (DDP)."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cli import options
from convplat.cli.common import announce_cluster, console, given


def canonical_model(name: str) -> str:
    """A model name as the registry spells it: ``ZFNet``, ``overfeat-fast`` -> ``zfnet``,
    ``overfeat_fast`` (the same lowering ``create_model`` applies)."""
    return name.strip().lower().replace("-", "_")


def train_command(
    model: Annotated[
        str | None,
        typer.Argument(
            help="alexnet, alexnet_1col, zfnet, overfeat_fast or overfeat_accurate "
            "(any case, - or _)."
        ),
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
    parallel: Annotated[
        str | None,
        typer.Option(
            help="data (DDP, default) or columns: AlexNet's two columns on two workers "
            "(§3.2; pairs of workers, data parallel across pairs)."
        ),
    ] = None,
    report: Annotated[
        bool | None,
        typer.Option("--report/--no-report", help="Write RUN/report.html at the end (on)."),
    ] = None,
) -> None:
    """Train a network on prepared shards with Ray Train (DDP), with the paper's recipe."""
    overrides = given(locals(), exclude=("model", "config", "resume"))
    from convplat.config import merge_train_config, resume_train_config
    from convplat.errors import ConfigError, UnknownModelError
    from convplat.training.models import list_models
    from convplat.training.trainer import fit

    if resume:
        cfg = resume_train_config(resume, overrides)
    elif model is None:
        raise ConfigError("expected a MODEL (see `convplat models`) or --resume RUN")
    else:
        name = canonical_model(model)
        if name not in list_models():
            raise UnknownModelError(f"unknown model {model!r}; choose one of {list_models()}")
        cfg = merge_train_config(name, config, overrides)
    announce_cluster(cfg.address)
    run_dir = fit(cfg, resume=resume)
    console.print(f"run written to {run_dir}")
    if cfg.report:
        from convplat.report import write_report

        # The workers counted the last epoch's confusion matrix: no second pass here.
        console.print(f"report: {write_report(run_dir, confusion=False)}", markup=False)
