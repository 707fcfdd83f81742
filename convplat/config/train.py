"""`TrainConfig` and where its values come from: the config's defaults < the model family's
paper recipe (``convplat/training/recipes/<family>.toml``) < a ``--config`` TOML file (a path,
or a packaged recipe's name such as ``demo``) < flags; or, for ``--resume``, the run's own
``config.json`` < the few flags a resumed run honours."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from convplat.config.shared import FLAG_ONLY, OPTIMIZERS, WorkerScale
from convplat.config.validate import (
    check,
    check_fields,
    choice,
    load_toml,
    merge,
    parse_json_object,
    refuse_keys,
)
from convplat.errors import ConfigError

SCHEDULES = ("plateau", "multistep", "constant")
PARALLEL = ("data", "columns")  # DDP, or AlexNet §3.2's two columns on two workers
INITS = ("paper", "kaiming")
RECIPES = Path(__file__).resolve().parent.parent / "training" / "recipes"
_FAMILIES = ("overfeat", "zfnet", "alexnet")


@dataclass(frozen=True)
class TrainConfig(WorkerScale):
    """Settings of `convplat train`; the defaults are AlexNet's recipe (AlexNet §5).

    ``batch_size`` is the global batch (the paper's 128), split evenly over the workers.
    """

    model: str = "alexnet"
    data: str = "shards/imagenet"
    out: str = "runs"
    run_name: str = ""
    epochs: int = 90
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 4
    plateau_threshold: float = 1e-3
    min_lr: float = 1e-6
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    lighting_std: float = 0.1
    label_smoothing: float = 0.0  # 0: the papers' plain cross-entropy; the demo preset uses 0.1
    input_scale: float = 1.0
    gpus: int = 0
    workers: int = 1
    cpus_per_worker: int = 0  # 0: share the cluster's CPUs evenly between the workers
    loader_workers: int = -1  # -1: one fewer than the worker's CPUs
    seed: int = 0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    keep_checkpoints: int = 3
    max_failures: int = 2
    shuffle_buffer: int = 1000
    limit_train_batches: int = 0  # 0: the whole epoch; >0: a smoke run of that many batches
    limit_val_batches: int = 0
    address: str | None = None
    progress: bool = True
    recipe: str = ""
    init: str = "paper"  # "paper" (the builders' published init) or "kaiming" (demo preset)
    parallel: str = "data"  # "data" (DDP) or "columns" (AlexNet §3.2: one column per worker)
    report: bool = True  # `convplat train` writes RUN/report.html at the end

    @property
    def data_world_size(self) -> int:
        """Workers that read different batches: all of them, or one per column pair."""
        return self.world_size // 2 if self.parallel == "columns" else self.world_size

    @property
    def per_worker_batch(self) -> int:
        """Each data-parallel rank's share of the global batch (both columns of a pair read
        the same batch)."""
        return self.batch_size // self.data_world_size

    def __post_init__(self) -> None:
        check_fields(self)
        choice("init", self.init, INITS)
        check(self.epochs >= 1, f"--epochs: expected >= 1, got {self.epochs}")
        choice("optimizer", self.optimizer, OPTIMIZERS)
        choice("schedule", self.schedule, SCHEDULES)
        self.check_run_settings()
        check(
            self.keep_checkpoints >= 1,
            f"keep_checkpoints: expected >= 1, got {self.keep_checkpoints}",
        )
        check(self.lighting_std >= 0, f"lighting_std: expected >= 0, got {self.lighting_std}")
        check(
            0 <= self.label_smoothing < 1,
            f"label_smoothing: expected 0 <= value < 1, got {self.label_smoothing}",
        )
        choice("--parallel", self.parallel, PARALLEL)
        if self.parallel == "columns":
            check(
                self.model == "alexnet",
                f"--parallel columns: expected the two-column alexnet, got {self.model!r}",
            )
            check(
                self.world_size % 2 == 0,
                "--parallel columns: expected an even number of workers (a pair per batch), "
                f"got {self.world_size}",
            )


def recipe_for(model: str) -> str:
    """Name of the paper recipe for a model (its family), e.g. alexnet_1col -> alexnet."""
    canonical = model.replace("-", "_")
    return next((family for family in _FAMILIES if canonical.startswith(family)), "alexnet")


def recipe_path(name_or_path: str) -> Path:
    """A TOML file, or the packaged recipe of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES / f"{name_or_path}.toml"
    if not packaged.is_file():
        choices = sorted(p.stem for p in RECIPES.glob("*.toml"))
        raise ConfigError(
            f"--config: no file {name_or_path!r} and no packaged recipe of "
            f"that name; packaged recipes: {', '.join(choices)}"
        )
    return packaged


def load_recipe(name_or_path: str) -> dict:
    """A recipe's settings; recipes set training settings only, never where data is read or
    written or which cluster is joined (those come from flags)."""
    path = recipe_path(name_or_path)
    values = load_toml(path)
    refuse_keys(str(path), values, FLAG_ONLY, "recipes set training settings; use the flags")
    return values


def merge_train_config(
    model: str, config_file: str | None = None, flags: dict | None = None
) -> TrainConfig:
    """Defaults < the model's recipe < ``config_file`` < ``flags``, each layer checked.

    ``model`` is the registry's name (the caller checks it exists)."""
    layers = [(f"recipe {recipe_for(model)}", load_recipe(recipe_for(model)))]
    if config_file:
        layers.append((str(recipe_path(config_file)), load_recipe(config_file)))
    layers.append(("flags", flags or {}))
    chosen = {"model": model, "recipe": config_file or recipe_for(model)}
    return merge(TrainConfig, [*layers, ("model", chosen)])


# What a resumed run may change: more epochs, another cluster, more restarts, bookkeeping.
RESUMABLE = ("epochs", "address", "max_failures", "keep_checkpoints", "progress", "report")


def resume_train_config(run_dir: str, flags: dict | None = None) -> TrainConfig:
    """The configuration ``run_dir`` recorded in its ``config.json``, with ``flags`` (those in
    ``RESUMABLE``) over it; a missing or damaged ``config.json`` is one ConfigError line."""
    from convplat.storage import resolve  # pyarrow: only when a run is read

    location = resolve(run_dir)
    if not location.exists("config.json"):
        raise ConfigError(
            f"{run_dir} is not a convplat run: no config.json "
            "(expected runs/<model>-<stamp>/ made by `convplat train`)"
        )
    name = location.child("config.json").uri
    saved = parse_json_object(location.read_bytes("config.json"), name)
    if "model" not in saved:  # else the run would silently go on as the default model
        raise ConfigError(f"{name} lacks model: not a training run")
    known = {f.name for f in fields(TrainConfig)}
    changed = sorted(
        k
        for k, v in (flags or {}).items()
        if k not in RESUMABLE and (list(v) if isinstance(v, tuple) else v) != saved.get(k)
    )
    if changed:  # silently ignoring them would mislead; applying them would break the run
        options = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise ConfigError(
            f"--resume {run_dir}: {options} cannot change a run that exists; --resume takes "
            f"only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} "
            "(start a new run for other settings)"
        )
    return merge(
        TrainConfig,
        [
            (name, {k: v for k, v in saved.items() if k in known}),
            ("flags", {k: v for k, v in (flags or {}).items() if k in RESUMABLE}),
        ],
    )
