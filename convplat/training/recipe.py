"""Recipes as data: the papers' training settings per model family, merged with user choices.

Precedence: TrainConfig defaults < the model's paper recipe (recipes/<family>.toml) < a
``--config`` TOML file (a path, or the name of a packaged recipe such as ``demo``) < flags.
The merge and its checks live with the config (:func:`convplat.config.merge_train_config`);
this adds the registry check and its canonical name.
"""

from __future__ import annotations

from convplat.config import TrainConfig
from convplat.errors import UnknownModelError


def resolve_train_config(
    model: str, config_file: str | None = None, overrides: dict | None = None
) -> TrainConfig:
    """Merge defaults, the model's recipe, an optional TOML file and explicit overrides."""
    from convplat.config import merge_train_config
    from convplat.training.models import list_models

    name = model.replace("-", "_")
    if name not in list_models():
        name = name.lower()
    if name not in list_models():
        raise UnknownModelError(f"unknown model {model!r}; choose one of {list_models()}")
    return merge_train_config(name, config_file, overrides)
