"""What every command module shares: the console and the "None means not given" rule.

Every option of a command is ``None`` unless the user passed it, and the command hands only the
given ones to its config class (or library function), so each default lives in one place: the
config dataclass or the library signature, never repeated as a typer default.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping

from rich.console import Console

from convplat.errors import ConfigError

# When the user started waiting (this module loads with the CLI): summaries' rates count the
# imports and start-up too, not only the work.
STARTED = time.perf_counter()

console = Console()


def given(
    values: Mapping[str, object],
    *,
    exclude: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
) -> dict:
    """The options the user passed, from a command's ``locals()``: None values and the
    ``exclude``d names (arguments handled by the command itself) are dropped; ``rename`` maps an
    option name to its config field where the two differ (``--mode`` -> ``modes``)."""
    skip = set(exclude)
    rename = rename or {}
    return {
        rename.get(name, name): value
        for name, value in values.items()
        if value is not None and name not in skip
    }


def defaults(function: Callable) -> dict:
    """A library function's keyword defaults, to print what a command actually used."""
    return {
        name: p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def parse_ints(text: str | None, option: str) -> list[int] | None:
    """``"3,17,40"`` -> ``[3, 17, 40]``; None stays None (the default applies)."""
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{option}: expected at least one value, got {text!r}")
    return values


def announce_cluster(address: str | None) -> None:
    """Say on stderr which Ray cluster a command joins (``--address`` or RAY_ADDRESS), so a
    run is never sent to another cluster unnoticed; nothing when a local Ray is started."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        print(f"convplat: joining the Ray cluster at {address}", file=sys.stderr)


def with_default(text: str, config: type, field: str) -> str:
    """Help ``text`` ending with the config class's default for ``field`` (typer cannot show
    it: the option's own default is None, meaning "not given")."""
    value = {f.name: f.default for f in dataclasses.fields(config)}[field]
    if isinstance(value, tuple):
        value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    elif isinstance(value, bool):
        value = "on" if value else "off"
    return f"{text.rstrip('.')} (default: {value})."
