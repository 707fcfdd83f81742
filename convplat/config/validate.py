"""The one validator every config uses: field types (pydantic's strict ``TypeAdapter`` over the
dataclass fields), ranges and choices, the merge of layered settings, and the loading of the
files settings come from. Every failure is one ``ConfigError`` line naming the key (and the file).

Types are strict: ``epochs = "3"``, ``batch_size = 32.0``, ``amp = "yes"`` or
``milestones = "30,50"`` are refused rather than coerced, because a recipe that says something
else than it means should fail before a GPU-day is spent on it. Lists (TOML and JSON have no
tuples) are accepted for tuple fields.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, TypeVar

from convplat.errors import ConfigError

C = TypeVar("C")


def check(condition: bool, message: str) -> None:
    """``ConfigError(message)`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def check_device(device: str | None) -> None:
    """``--device``: None (pick one), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; checked before
    any work, since torch only rejects a bad name when the model moves there."""
    check(
        device is None or re.fullmatch(r"cpu|cuda(:\d+)?|mps", device) is not None,
        f"--device: expected cpu, cuda or cuda:N, got {device!r}",
    )


def pick_device(device: str | None):
    """``--device`` checked (:func:`check_device`) and made a ``torch.device``: None picks
    cuda where there is one, else cpu; a cuda or mps this machine lacks is one line (torch's
    own error, raised when the model moves there, names no option)."""
    import torch

    check_device(device)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = torch.device(device)
    if target.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check((target.index or 0) < count, f"--device {device}: this machine has {count} GPUs")
    if target.type == "mps":
        check(torch.backends.mps.is_available(), f"--device {device}: no MPS on this machine")
    return target


def choice(flag: str, value: object, choices: Sequence[str]) -> None:
    """``value`` must be one of ``choices``: ``--flag: expected one of a, b, got 'c'``."""
    check(value in choices, f"{flag}: expected one of {', '.join(choices)}, got {value!r}")


def as_tuple(value: object, flag: str, kind: type) -> tuple:
    """``"a,b"``, ``["a", "b"]`` or ``("a",)`` -> a tuple of ``kind``; ConfigError otherwise."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts: Iterable = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, int | float):
        parts = [value]
    else:
        parts = list(value)  # type: ignore[call-overload]
    try:
        return tuple(kind(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{flag}: expected comma-separated {_PLURAL.get(kind, 'names')}, got {value!r}"
        ) from None


_SINGULAR = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "booleans", str: "names"}


def describe(hint: Any) -> str:
    """What a field's type asks for, in words: ``tuple[int, ...]`` -> "a list of integers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (UnionType, typing.Union):
        return " or ".join(describe(a) for a in args if a is not NoneType)
    if origin is tuple:
        return f"a list of {_PLURAL.get(args[0], 'values')}" if args else "a list"
    return _SINGULAR.get(hint, getattr(hint, "__name__", str(hint)))


@functools.cache
def _fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """Per field of ``cls``: a pydantic ``TypeAdapter`` for its type, and the type."""
    from pydantic import TypeAdapter  # ~0.1 s: only when a config is built, not for --help

    hints = typing.get_type_hints(cls)
    return {f.name: (TypeAdapter(hints[f.name]), hints[f.name]) for f in dataclasses.fields(cls)}


def _lists_to_tuples(value: object) -> object:
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def check_types(cls: type, values: Mapping[str, object], source: str = "") -> dict:
    """``values`` checked against the field types of the dataclass ``cls``, strictly, lists
    turned into tuples; keys that are not fields are left to the caller. One ConfigError line
    (``source: key: expected ..., got ...``) for the first value of the wrong type."""
    from pydantic import ValidationError

    fields = _fields(cls)
    checked = {}
    for key, value in values.items():
        if key not in fields:
            checked[key] = value
            continue
        adapter, hint = fields[key]
        converted = _lists_to_tuples(value)
        try:
            adapter.validate_python(converted, strict=True)
        except ValidationError:
            where = f"{source}: " if source else ""
            raise ConfigError(f"{where}{key}: expected {describe(hint)}, got {value!r}") from None
        checked[key] = converted
    return checked


def check_fields(config: object) -> None:
    """Type-check a dataclass instance's own fields (its ``__post_init__`` calls this first),
    storing list values as tuples so the frozen config stays hashable and JSON-stable."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    for key, value in check_types(type(config), values).items():
        if value is not values[key]:
            object.__setattr__(config, key, value)


def merge(cls: type[C], layers: Iterable[tuple[str, Mapping[str, object]]]) -> C:
    """Build ``cls`` from layered settings, later layers winning (defaults < recipe < file <
    flags); each layer's keys and types are checked and reported with the layer's name."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict = {}
    for source, layer in layers:
        unknown = sorted(set(layer) - known)
        check(
            not unknown,
            f"{source}: unknown setting(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(sorted(known))}",
        )
        values.update(check_types(cls, layer, source))
    return cls(**values)


def refuse_keys(source: str, values: Mapping[str, object], keys: Iterable[str], why: str) -> None:
    """A settings file must not set ``keys`` (e.g. where data goes): ConfigError naming one."""
    found = sorted(set(values) & set(keys))
    check(not found, f"{source}: {', '.join(found)} may not be set here ({why})")


def load_toml(path: str | Path) -> dict:
    """A TOML file as a dict; unreadable or invalid TOML -> one ConfigError line naming it."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8 text; tomllib decodes before parsing
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text: byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None


def parse_json_object(data: bytes, name: str) -> dict:
    """A JSON object from ``data`` (the file ``name``); truncated, invalid or not an object ->
    one ConfigError line naming the file."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc}); the file is damaged") from None
    check(isinstance(value, dict), f"{name}: expected a JSON object, got {type(value).__name__}")
    return value


def check_loader_workers(value: int) -> None:
    check(value >= -1, f"--loader-workers: expected >= 0, or -1 for the CPUs' default, got {value}")
