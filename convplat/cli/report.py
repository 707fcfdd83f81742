"""`convplat report RUN`: RUN/report.html, one self-contained page per run."""

from __future__ import annotations

from typing import Annotated

import typer

from convplat.cli.common import console


def report_command(
    run: Annotated[
        str | None, typer.Argument(help="Run directory (default: the newest under runs/).")
    ] = None,
    confusion: Annotated[
        bool,
        typer.Option(
            "--confusion/--no-confusion",
            help="Evaluate the validation split for a confusion matrix.",
        ),
    ] = True,
) -> None:
    """One self-contained HTML page (images embedded) with the run's config, curves, errors,
    confusion matrix, filters and studies."""
    from convplat.report import write_report
    from convplat.training.checkpoints import newest_run

    run = run or newest_run("runs")
    console.print(f"wrote {write_report(run, confusion=confusion)}", markup=False)
