"""`convplat ablate`: ZFNet Table 3 - train several architecture variants with one recipe and
tabulate train top-1, val top-1 and val top-5 error.

Each variant is one ordinary `convplat train` job (``fit``: one Ray Train run, its own run
directory under ``<out>/ablate-<stamp>/<variant>/``), then `convplat evaluate` (centre crop) on
the train and val splits of its final weights. Jobs run concurrently when the cluster has room
for more than one: a job needs ``world_size x cpus_per_worker`` CPUs (and ``gpus`` GPUs); with
``cpus_per_worker = 0`` (the default: a job shares all CPUs) only one fits, so jobs run one
after another. Concurrent jobs are driven from threads of this process (``fit`` already runs
``TorchTrainer.fit`` in a thread); Ray queues a job until its workers' resources are free.

``table.md`` and ``table.json`` are rewritten (atomically) after every finished variant, so an
interrupted study keeps the rows it has.
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime

from convplat.config import TrainConfig
from convplat.errors import ConfigError
from convplat.storage import Location
from convplat.training.models import model_info
from convplat.training.models.variants import PAPER_TABLE3, table3_row, variant_names
from convplat.training.recipe import resolve_train_config

# Shorthands for a whole Table 3 block.
GROUPS = {
    "table3-alexnet": ["alexnet", *variant_names("alexnet")],
    "table3-zfnet": ["zfnet", *variant_names("zfnet")],
}


def expand_variants(names: list[str]) -> list[str]:
    """Canonical model names, in order, shorthands expanded; refuses an empty set or repeats."""
    out: list[str] = []
    for name in names:
        for part in name.split(","):
            part = part.strip().lower()
            if part:
                out += GROUPS.get(part, [part.replace("-", "_")])
    if not out:
        raise ConfigError("expected one or more variants, e.g. zfnet zfnet-no34 zfnet-b")
    repeated = sorted({n for n in out if out.count(n) > 1})
    if repeated:
        raise ConfigError(f"variants: {', '.join(repeated)} given more than once")
    return out


def job_slots(config: TrainConfig, variants: int) -> int:
    """How many of these jobs the connected cluster can run at once (at least 1)."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    slots = variants
    if config.cpus_per_worker:
        slots = min(slots, cpus // (config.cpus_per_worker * config.world_size))
    else:
        slots = 1  # each job shares every CPU among its workers (raytrain.check_scaling)
    if config.gpus:
        slots = min(slots, gpus // config.gpus)
    return max(1, slots)


def ablate(
    variants: list[str],
    *,
    config_file: str | None = None,
    overrides: dict | None = None,
    out: str = "runs",
    name: str | None = None,
    parallel: int = 0,
    train_error: bool = True,
    eval_batch_size: int = 64,
) -> dict:
    """Train every variant with the same recipe and write ``table.md`` / ``table.json``.

    Args:
        variants: model names (``zfnet``, ``zfnet-no34``, ...) or ``table3-zfnet`` /
            ``table3-alexnet`` for a whole block of Table 3.
        config_file: recipe file or packaged recipe name (e.g. ``demo``) over each model's
            paper recipe, as ``convplat train --config``.
        overrides: `convplat train` options (data, epochs, batch_size, workers, ...).
        parallel: at most this many jobs at once (0: as many as the cluster has room for).
        train_error: also evaluate the final weights on the train split (Table 3's first
            column; one forward pass over the training set per variant).

    Returns:
        The table: ``dir``, ``parallel``, ``rows`` (one dict per variant, in the given order).
    """
    from convplat.training.raytrain import check_scaling, new_run_dir, run_name
    from convplat.training.trainer import check_shards

    names = expand_variants(variants)
    if parallel < 0:
        raise ConfigError(f"--parallel: expected >= 0, got {parallel}")
    overrides = dict(overrides or {})
    for key in ("out", "run_name", "model"):
        overrides.pop(key, None)
    given = bool(name)
    name = name or f"ablate-{datetime.now():%Y%m%d-%H%M%S}"
    configs = {
        n: resolve_train_config(n, config_file, {**overrides, "out": out, "run_name": n})
        for n in names
    }  # every name and option checked before any job starts
    for config in configs.values():  # and the shards, for each model's crops
        check_shards(config)
    check_scaling(next(iter(configs.values())))  # and the cluster: nothing written before
    location = new_run_dir(out, name, given=given, hint="choose another --name")
    name = run_name(location)
    configs = {n: dataclasses.replace(c, out=location.uri) for n, c in configs.items()}
    slots = job_slots(next(iter(configs.values())), len(names))
    workers = min(parallel or slots, slots)
    if workers > 1:  # rank-0 progress bars of concurrent jobs would overwrite each other
        configs = {n: dataclasses.replace(c, progress=False) for n, c in configs.items()}
    table = {
        "name": name,
        "dir": location.uri,
        "recipe": config_file,
        "overrides": overrides,
        "parallel": workers,
        "started": time.time(),
        "rows": [_pending_row(n) for n in names],
    }
    _write(location, table)

    def one(variant: str) -> dict:
        return _train_and_score(configs[variant], train_error, eval_batch_size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(one, n): n for n in names}
        for future in as_completed(futures):
            row = future.result()  # a ConvplatError (user mistake) stops the study
            table["rows"][names.index(futures[future])].update(row)
            _write(location, table)
    table["seconds"] = time.time() - table["started"]
    _write(location, table)
    return table


def _pending_row(name: str) -> dict:
    paper = PAPER_TABLE3.get(name)
    return {
        "variant": name,
        "table3_row": table3_row(name),
        "parameters": model_info(name)["parameters"],
        "status": "pending",
        "paper_err_pct": dict(zip(("train_top1", "val_top1", "val_top5"), paper, strict=True))
        if paper
        else None,
    }


def _train_and_score(config: TrainConfig, train_error: bool, batch_size: int) -> dict:
    """One variant: fit, then centre-crop error of the final weights on train and val."""
    from convplat.training.evaluate import evaluate
    from convplat.training.raytrain import TrainingError
    from convplat.training.trainer import fit

    started = time.perf_counter()
    try:
        run = fit(config)
    except TrainingError as exc:  # diverged / workers lost: record it, keep the other rows
        return {"status": "failed", "error": str(exc), "seconds": time.perf_counter() - started}
    val = evaluate(run, split="val", batch_size=batch_size)
    train = evaluate(run, split="train", batch_size=batch_size) if train_error else None
    return {
        "status": "done",
        "run": run,
        "epochs": config.epochs,
        "train_top1_err": None if train is None else train["top1_err"],
        "val_top1_err": val["top1_err"],
        "val_top5_err": val["top5_err"],
        "train_count": None if train is None else train["count"],
        "val_count": val["count"],
        "seconds": time.perf_counter() - started,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def format_markdown(table: dict) -> str:
    """Table 3 as Markdown: our error % per variant, and the paper's where it has the row."""
    lines = [
        f"# {table['name']}: architecture ablations (ZFNet Table 3)",
        "",
        f"Recipe: {table['recipe'] or 'each model’s paper recipe'}; options: "
        f"{json.dumps(table['overrides'], sort_keys=True)}; centre-crop error of the final "
        "weights, %.",
        "",
        "| variant | Table 3 row | parameters | train top-1 | val top-1 | val top-5 "
        "| paper train / val top-1 / val top-5 |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in table["rows"]:
        paper = row.get("paper_err_pct")
        paper_text = (
            f"{paper['train_top1']} / {paper['val_top1']} / {paper['val_top5']}" if paper else "–"
        )
        if row["status"] == "done":
            ours = [_pct(row[k]) for k in ("train_top1_err", "val_top1_err", "val_top5_err")]
        else:
            ours = [row["status"]] + ["–"] * 2
        lines.append(
            f"| `{row['variant']}` | {row['table3_row'] or '–'} | {row['parameters']:,} | "
            + " | ".join(ours)
            + f" | {paper_text} |"
        )
    return "\n".join(lines) + "\n"


def _write(location: Location, table: dict) -> None:
    location.write_bytes("table.json", (json.dumps(table, indent=2) + "\n").encode())
    location.write_bytes("table.md", format_markdown(table).encode())
