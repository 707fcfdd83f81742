"""Training options `convplat train` and `convplat ablate` share, declared once.

Each is None unless given, so the recipe (or `--config`) supplies the value otherwise.
"""

from __future__ import annotations

from typing import Annotated

import typer

Data = Annotated[str | None, typer.Option(help="Prepared shards.")]
Epochs = Annotated[int | None, typer.Option(help="Epochs (recipe: 90; ZFNet 70).")]
BatchSize = Annotated[int | None, typer.Option(help="Global batch size (128).")]
Lr = Annotated[float | None, typer.Option(help="Learning rate (0.01).")]
Seed = Annotated[int | None, typer.Option(help="Random seed.")]
Gpus = Annotated[int | None, typer.Option(help="Ray Train workers with one GPU each.")]
Workers = Annotated[int | None, typer.Option(help="CPU workers when --gpus 0.")]
CpusPerWorker = Annotated[int | None, typer.Option(help="CPUs per worker (0: even).")]
LoaderWorkers = Annotated[
    int | None, typer.Option(help="Data-loader processes per worker (-1: CPUs per worker - 1).")
]
EvalLoaderWorkers = Annotated[
    int | None,
    typer.Option(help="Data-loader processes (-1: one fewer than the CPUs, at most 8)."),
]
LimitTrainBatches = Annotated[
    int | None, typer.Option(help="Batches per epoch for a smoke run (0: all).")
]
LimitValBatches = Annotated[int | None, typer.Option(help="Validation batches per epoch (0: all).")]
Amp = Annotated[bool | None, typer.Option("--amp/--no-amp", help="bf16 autocast.")]
Address = Annotated[str | None, typer.Option(help="Ray cluster address.")]
