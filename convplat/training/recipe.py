"""Recipes as data: the papers' training settings per model family, merged with user choices.

Precedence: TrainConfig defaults < the model's paper recipe (recipes/<family>.toml) < a
``--config`` TOML file (a path, or the name of a packaged recipe such as ``demo``) < flags.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from convplat.config import TrainConfig
from convplat.errors import ConfigError, UnknownModelError

RECIPES = Path(__file__).resolve().parent / "recipes"
_FAMILIES = (("overfeat", "overfeat"), ("zfnet", "zfnet"), ("alexnet", "alexnet"))


def recipe_for(model: str) -> str:
    """Name of the paper recipe for a model (its family), e.g. alexnet_1col -> alexnet."""
    canonical = model.replace("-", "_")
    for prefix, recipe in _FAMILIES:
        if canonical.startswith(prefix):
            return recipe
    return "alexnet"


def load_toml(name_or_path: str) -> dict:
    """Read a TOML file, or the packaged recipe of that name."""
    path = Path(name_or_path)
    if not path.is_file():
        packaged = RECIPES / f"{name_or_path}.toml"
        if not packaged.is_file():
            choices = sorted(p.stem for p in RECIPES.glob("*.toml"))
            raise ConfigError(
                f"--config: no file {name_or_path!r} and no packaged recipe of "
                f"that name; packaged recipes: {', '.join(choices)}"
            )
        path = packaged
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None


def resolve_train_config(
    model: str, config_file: str | None = None, overrides: dict | None = None
) -> TrainConfig:
    """Merge defaults, the model's recipe, an optional TOML file and explicit overrides."""
    from convplat.training.models import list_models

    model = model.replace("-", "_")
    if model not in list_models():
        raise UnknownModelError(f"unknown model {model!r}; choose one of {list_models()}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict = {}
    for source, layer in (
        (recipe_for(model), load_toml(recipe_for(model))),
        (config_file, load_toml(config_file) if config_file else {}),
        ("flags", overrides or {}),
    ):
        unknown = sorted(set(layer) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        values.update(layer)
    values["model"] = model
    values.setdefault("recipe", config_file or recipe_for(model))
    if config_file:
        values["recipe"] = config_file
    return TrainConfig(**values)
