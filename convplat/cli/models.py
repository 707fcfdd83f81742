"""`convplat models`: the registered networks with their sizes."""

from __future__ import annotations

from rich.table import Table

from convplat.cli.common import console


def models_command() -> None:
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
