"""The `convplat` command line: the typer app and its error boundary.

Each command lives in its own module of this package (parse, build a config, make one library
call, print a summary); this one only assembles them and turns user mistakes (ConvplatError,
bad options) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

import convplat
from convplat.cli.ablate import ablate_command
from convplat.cli.boundary import user_facing
from convplat.cli.demo_data import demo_data_command
from convplat.cli.detect import detect_app
from convplat.cli.evaluate import evaluate_command
from convplat.cli.features import features_command
from convplat.cli.localize import localize_app
from convplat.cli.models import models_command
from convplat.cli.prepare import prepare_command
from convplat.cli.report import report_command
from convplat.cli.train import train_command
from convplat.cli.transfer import transfer_command
from convplat.cli.verify import verify_command
from convplat.cli.visualize import visualize_app

app = typer.Typer(
    name="convplat",
    help="Pretrain AlexNet, ZFNet and OverFeat on ImageNet with Ray; study and transfer them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


app.command("demo-data")(demo_data_command)
app.command("prepare")(prepare_command)
app.command("models")(models_command)
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("transfer")(transfer_command)
app.command("ablate")(ablate_command)
app.command("features")(features_command)
app.command("report")(report_command)
app.command("verify")(verify_command)
app.add_typer(visualize_app, name="visualize")
app.add_typer(localize_app, name="localize")
app.add_typer(detect_app, name="detect")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the typer app; user mistakes, a full disk and a Ray that does not start
    become one line on stderr and exit 2 (see :mod:`convplat.cli.boundary`)."""
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
    except Exception as exc:
        message = user_facing(exc)
        if message is None:
            raise  # a bug, not a user mistake: keep the traceback
        print(f"convplat: error: {message}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    run()
