"""`convplat prepare`: list a raw dataset, fan shard tasks out over Ray, write the manifest.

The only module that touches Ray for preprocessing: `write_shard` (pure) runs as one task per
shard; the listing and the plan stream through temporary files (`readers.stream_dataset`,
`plan.ShardPlan`), so the driver holds one entry per shard, not per image; it keeps complete
shards of an earlier run, reduces the statistics partial sums, and writes manifest.json,
index.parquet, stats.npz and rejected.jsonl atomically. The output is
a transaction (outdir.py): under a lock, a manifest that no longer describes the plan is removed
before any shard changes, shards outside the plan are removed, and the manifest is written last.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np

import convplat
from convplat.cluster import cluster_size, ensure_ray, fan_out, use_ray
from convplat.config import PrepareConfig
from convplat.errors import ConfigError, DatasetError
from convplat.pipeline.image import MAX_BYTES, MAX_PIXELS
from convplat.pipeline.index import INDEX_SCHEMA, IndexWriter
from convplat.pipeline.local import LOCAL_POOL_MIN_IMAGES, run_local
from convplat.pipeline.outdir import (
    MANIFEST,
    PARTS_DIR,
    OutputError,
    claim,
    locked,
    mark_owned,
    read_manifest,
    remove_stale_shards,
    stale_shards,
    write_error,
)
from convplat.pipeline.plan import PlannedShard, ShardPlan
from convplat.pipeline.readers import DatasetStream, display_path, stream_dataset
from convplat.pipeline.shards import (
    ShardInfo,
    ShardOptions,
    load_complete_shard,
    load_partial_stats,
    write_shard,
)
from convplat.pipeline.stats import add_partial, finalize, merge_partials
from convplat.progress import progress_bar
from convplat.storage import Location, resolve

FORMAT_VERSION = 1
__all__ = ["FORMAT_VERSION", "INDEX_SCHEMA", "prepare"]


def prepare(
    config: PrepareConfig,
    *,
    overwrite: bool | None = None,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
    executor: str | None = None,
    started: float | None = None,
) -> dict:
    """Turn a raw dataset tree into WebDataset shards plus manifest, index and statistics.

    ``overwrite`` (default: ``config.overwrite`` when the config has it, else False) lets
    prepare write into a non-empty directory that is not a convplat output; it still deletes
    only its own files and never overwrites a foreign manifest.json. ``max_pixels`` (checked
    from each file's header before decoding) and ``max_bytes`` (checked before reading) send
    decompression bombs and huge files to rejected.jsonl; each defaults to the config's field
    of that name when it has one, else to the PrepareConfig defaults.
    ``executor`` (``auto``, ``ray``, ``local``; default the config's, else ``auto``) says where
    the shard tasks run (:func:`_executor`). ``started`` is the ``time.perf_counter()`` at which
    the user started waiting (the CLI's start), so the summary's images/s counts start-up too.

    Returns the manifest (also written to ``<out>/manifest.json``), with a ``summary`` entry
    (counts, kept shards, seconds, images/s) that is printed but not saved.

    Raises:
        DatasetError: no (decodable) training images.
        OutputError: ``--out`` is a file, foreign, locked by another run, or cannot be written.
    """
    started = time.perf_counter() if started is None else started
    # Tasks may run on other nodes, in other working directories: they get the resolved URI.
    config = dataclasses.replace(config, out=resolve(config.out).uri)
    if executor is None:
        executor = config.executor
    if executor not in ("auto", "ray", "local"):
        raise ConfigError(f"--executor: expected auto, ray or local, got {executor!r}")
    if overwrite is None:
        overwrite = config.overwrite
    limits = {
        "max_pixels": _limit("max_pixels", max_pixels, config, MAX_PIXELS),
        "max_bytes": _limit("max_bytes", max_bytes, config, MAX_BYTES),
    }
    # The listing and the plan stream through temporary files: the driver keeps one entry per
    # shard, not one object per image (pipeline/plan.py, readers/records.py).
    with stream_dataset(config.source, config.layout) as listing:
        if not listing.split_counts().get("train"):
            raise DatasetError(
                f"no training images found under {config.source}: statistics need a train split"
            )
        options = ShardOptions(
            size=config.size,
            quality=config.quality,
            crop=config.crop,
            source_root=listing.root,
            wnids=tuple(display_path(c.wnid) for c in listing.classes),
            **limits,
        )
        plan = ShardPlan.build(listing.items(), config.shard_size, config.seed, options)
    with plan:
        location = resolve(config.out)
        claim(location, overwrite)
        with locked(location):
            try:
                mark_owned(location)
                location.remove_temporaries(PARTS_DIR)
            except OSError as exc:
                raise write_error(location.uri, exc) from None
            return _prepare_locked(config, listing, options, plan, location, started, executor)


def _limit(name: str, given: int | None, config: PrepareConfig, default: int) -> int:
    """The argument if given, else the config's field of that name if it has one, else default."""
    value = given if given is not None else getattr(config, name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {value!r}")
    return value


def _prepare_locked(
    config: PrepareConfig,
    listing: DatasetStream,
    options: ShardOptions,
    plan: ShardPlan,
    location: Location,
    started: float,
    executor: str,
) -> dict:
    """prepare's work once ``--out`` is claimed and locked."""
    specs, digests = plan.shards, plan.digests
    infos: dict[str, ShardInfo] = {}
    todo: list[PlannedShard] = []
    for spec in specs:
        info = load_complete_shard(spec, location, options, spec.digest)
        if info is None:
            todo.append(spec)
        else:
            infos[spec.name] = info
    kept = len(infos)
    fingerprint = plan.fingerprint()
    stale = stale_shards(location, digests)
    old = read_manifest(location)
    try:
        if old is not None and (old.get("plan") != fingerprint or todo or stale):
            # The manifest goes before any shard changes: killed from here on, the directory
            # has no manifest (readers refuse it) rather than one describing other shards.
            location.delete(MANIFEST)
        remove_stale_shards(location, digests)
    except OSError as exc:
        raise write_error(location.uri, exc) from None
    # Bounded driver memory: each shard's statistics partial is folded into one running total
    # and its index rows streamed to index.parquet as it comes in; neither is kept.
    total = merge_partials(config.size, [])
    try:
        index = IndexWriter(location, [spec.name for spec in specs])
    except OSError as exc:
        raise write_error(location.uri, exc) from None

    def collect(info: ShardInfo, partial: dict | None) -> None:
        infos[info.name] = info
        if info.split == "train":
            if partial is None:  # a kept shard: its partial is in its sidecar
                partial = load_partial_stats(info.name, location)
            add_partial(total, partial)
        index.add(info.name, info.rows)
        info.rows = []

    try:
        for name in list(infos):
            collect(infos[name], None)
        ran, nodes = "none", set()
        if todo:
            ran = _run_tasks(
                todo, plan, config, executor, options, collect, len(specs), kept, nodes
            )
            _check_visible(location, todo)
        train_infos = [i for i in infos.values() if i.split == "train"]
        if sum(i.count for i in train_infos) == 0:
            raise DatasetError(
                f"none of the training images under {config.source} could be "
                "decoded; see rejected.jsonl"
            )
        statistics = finalize(total)
        manifest = _manifest(config, listing, specs, infos, statistics, fingerprint)
        index.commit()
    except BaseException as exc:
        index.abort()
        if isinstance(exc, OSError):
            raise write_error(location.uri, exc) from None
        raise
    try:
        _write_outputs(location, listing, specs, infos, statistics)
        location.write_bytes(MANIFEST, json.dumps(manifest, indent=2).encode())
    except OSError as exc:
        raise write_error(location.uri, exc) from None
    seconds = time.perf_counter() - started
    written = sum(infos[s.name].count for s in todo)
    manifest["summary"] = {
        "shards": len(specs),
        "kept": kept,
        "written": len(todo),
        "images": sum(i.count for i in infos.values()),
        "rejected": sum(len(i.rejected) for i in infos.values()) + len(listing.skipped),
        "seconds": round(seconds, 2),
        "images_per_s": round(written / seconds, 1),
        "executor": ran,
        "ray_nodes": len(nodes),  # distinct Ray nodes the shard tasks ran on (0: no Ray)
    }
    return manifest


def _check_visible(location: Location, todo: list[PlannedShard]) -> None:
    """Shards that tasks on other nodes wrote to their own local disks are not here: say so
    (a cluster needs ``--out`` on shared storage: a URI or a mount every node shares)."""
    missing = [spec.name for spec in todo if not location.exists(spec.name)]
    if missing:
        raise OutputError(
            f"{len(missing)} shard(s) written by the cluster's tasks are not visible under "
            f"{location.uri} (e.g. {missing[0]}): with --address, --out must be storage every "
            "node shares (an s3://, gs://, hdfs:// URI or a shared mount)"
        )


def _run_tasks(
    todo: list[PlannedShard],
    plan: ShardPlan,
    config: PrepareConfig,
    executor: str,
    options: ShardOptions,
    collect: Callable[[ShardInfo, dict], None],
    total: int,
    done: int,
    nodes: set[str],
) -> str:
    """Run the shard tasks where it pays (see :func:`_executor`); ``collect`` takes each result
    as its task finishes and ``nodes`` gets the Ray nodes they ran on. Returns the executor
    used: ``ray``, ``pool`` or ``inline``.

    Each task's spec is read from the plan when it is handed out, and at most two tasks per
    CPU are in flight, so neither the driver nor Ray holds every task's items at once.
    """
    images = sum(shard.count for shard in todo)
    executor = _executor(config, executor, images, len(todo))
    if executor == "ray":
        ensure_ray(config.address, num_cpus=config.num_cpus)
        jobs = ((shard, (plan.spec(shard), config.out, options), {}) for shard in todo)
        results = fan_out(write_shard, jobs, max_in_flight=2 * cluster_size()[0], nodes=nodes)
    else:
        workers = 1 if executor == "inline" else _local_workers(config, len(todo))
        specs = ((shard, plan.spec(shard)) for shard in todo)
        results = run_local(specs, config.out, options, workers)
    started = time.perf_counter()
    processed = 0
    with progress_bar(enabled=config.progress) as bar:
        shard_task = bar.add_task("shards", total=total, completed=done, rate="")
        # (fan_out re-raises a task's OutputError as itself, not Ray's wrapper.)
        for shard, (info, stats) in results:
            collect(info, stats)
            del info, stats
            processed += shard.count
            rate = processed / max(time.perf_counter() - started, 1e-9)
            bar.update(shard_task, advance=1, rate=f"{rate:,.0f} images/s ({processed}/{images})")
    return executor


def _executor(config: PrepareConfig, executor: str, images: int, shards: int) -> str:
    """Ray for a cluster (``--address``/RAY_ADDRESS) or from ``ray_min_images`` images (the one
    rule, cluster.use_ray); below it a local process pool, and for a job too small to repay
    even the pool's start-up (< LOCAL_POOL_MIN_IMAGES, or one shard) the driver itself.

    ``config.ray_min_images`` is read when the config has it (the CLI's ``--ray-min-images``).
    """
    min_images = config.ray_min_images
    if use_ray(executor, images, config.address, min_images):
        return "ray"
    if shards == 1 or images < LOCAL_POOL_MIN_IMAGES or _local_workers(config, shards) == 1:
        return "inline"
    return "pool"


def _local_workers(config: PrepareConfig, shards: int) -> int:
    return max(1, min(shards, config.num_cpus or os.cpu_count() or 1))


def _write_outputs(location, listing: DatasetStream, specs, infos, statistics) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: v for k, v in statistics.items()})
    location.write_bytes("stats.npz", buffer.getvalue())

    rejected = [{"path": display_path(path), "reason": reason} for path, reason in listing.skipped]
    rejected += [r for spec in specs for r in infos[spec.name].rejected]
    rejected.sort(key=lambda r: r["path"])
    location.write_bytes("rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected).encode())


def _manifest(
    config: PrepareConfig, listing: DatasetStream, specs, infos, statistics, fingerprint: str
) -> dict:
    splits: dict[str, dict] = {}
    for spec in specs:
        info = infos[spec.name]
        split = splits.setdefault(spec.split, {"shards": [], "count": 0})
        split["shards"].append(
            {"name": info.name, "count": info.count, "bytes": info.bytes, "sha256": info.sha256}
        )
        split["count"] += info.count
    return {
        "format_version": FORMAT_VERSION,
        "tool": "convplat",
        "tool_version": convplat.__version__,
        "source": display_path(listing.root),
        "layout": listing.layout,
        "size": config.size,
        "crop": config.crop,
        "quality": config.quality,
        "seed": config.seed,
        "shard_size": config.shard_size,
        "plan": fingerprint,
        "classes": [
            {k: display_path(v) if isinstance(v, str) else v for k, v in asdict(c).items()}
            for c in listing.classes
        ],
        "splits": splits,
        "statistics": {
            "file": "stats.npz",
            "count": int(statistics["count"]),
            "rgb_mean": [round(float(v), 4) for v in statistics["rgb_mean"]],
            "eigval": [round(float(v), 4) for v in statistics["eigval"]],
            "eigvec": [[round(float(v), 6) for v in row] for row in statistics["eigvec"]],
        },
        "rejected": {
            "file": "rejected.jsonl",
            "count": sum(len(i.rejected) for i in infos.values()) + len(listing.skipped),
        },
    }
