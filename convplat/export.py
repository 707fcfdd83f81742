"""`convplat features RUN SOURCE --layer fc7`: any layer's activations, to Parquet.

OverFeat's "feature extractor" and ZFNet Table 7's layer-n features, for use in other tools.
SOURCE is a shard set written by `convplat prepare` (one Ray task per shard) or a folder of
images (class folders, any layout `convplat prepare` reads, or a flat folder; chunks of files
per Ray task). Images are prepared exactly as in training (shards: as stored; files: shorter
side to the shards' size, centre crop, JPEG at the shards' quality) and the model sees the
centre ``input_size`` crop, mean-image subtracted. The extraction is transfer's own code
(``convplat.transfer.features``: ``extract_jpegs`` / ``extract_chunk``), so `convplat
transfer`'s cached features and these are the same numbers.

Output: one Parquet file, one row per image: ``key`` (string), ``label`` (int64; -1 for a
flat folder), ``vector`` (fixed_size_list<float32>[dim]); the file's metadata (key
``convplat``) records run, model, layer, pool, dim, source and classes. Written atomically.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from convplat.errors import ConfigError, DatasetError
from convplat.pipeline.readers import IMAGE_EXTENSIONS, read_dataset
from convplat.pipeline.shardset import ShardSet, ShardTask, load_stats, read_manifest
from convplat.storage import resolve
from convplat.transfer.features import (
    DEFAULT_QUALITY,
    POOLS,
    Checkpoint,
    extract_chunk,
    extract_jpegs,
    layer_dims,
    load_checkpoint,
    resolve_layer,
)

EXECUTORS = ("auto", "local", "ray")
METADATA_KEY = b"convplat"


@dataclass
class Source:
    """What to extract from: shards (names per split) or image files (paths, keys, labels)."""

    kind: str  # "shards" or "folder"
    uri: str
    keys: list[str] = field(default_factory=list)  # folder
    labels: list[int] = field(default_factory=list)  # folder
    paths: list[str] = field(default_factory=list)  # folder
    shards: list[tuple[str, int]] = field(default_factory=list)  # (name, count)
    classes: list[str] = field(default_factory=list)
    skipped: int = 0

    @property
    def count(self) -> int:
        return sum(c for _, c in self.shards) if self.kind == "shards" else len(self.paths)


def open_source(source: str, split: str = "all", layout: str = "auto") -> Source:
    """A shard set (``manifest.json`` present; ``split`` = all, train, val or a comma list) or
    a folder of images (read by ``read_dataset``; a flat folder gets label -1).

    Raises:
        DatasetError: nothing usable at ``source``.
    """
    location = resolve(source)
    if location.exists("manifest.json"):
        shard_set = ShardSet.open(location)
        splits = shard_set.splits if split == "all" else split.split(",")
        shards = [(name, n) for s in splits for name, n in shard_set.shards(s.strip())]
        classes = [c["wnid"] for c in shard_set.classes]
        return Source("shards", location.uri, shards=shards, classes=classes)
    if "://" in source or not os.path.isdir(source):
        raise DatasetError(
            f"{source}: expected a shard directory (with manifest.json, from `convplat "
            "prepare`) or a folder of images"
        )
    entries = sorted(
        (e for e in os.scandir(source) if not e.name.startswith(".")), key=lambda e: e.name
    )
    images = [e for e in entries if e.is_file() and _is_image(e.name)]
    if images and not any(e.is_dir() for e in entries):  # a flat folder: no classes
        return Source(
            "folder",
            location.uri,
            keys=[os.path.splitext(e.name)[0] for e in images],
            labels=[-1] * len(images),
            paths=[e.path for e in images],
            skipped=len(entries) - len(images),
        )
    listing = read_dataset(source, layout)
    return Source(
        "folder",
        location.uri,
        keys=[it.key for it in listing.items],
        labels=[it.label for it in listing.items],
        paths=[it.path for it in listing.items],
        classes=[c.wnid for c in listing.classes],
        skipped=len(listing.skipped),
    )


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# --- one Ray task's work ----------------------------------------------------------------------


def shard_samples(uri: str, name: str, count: int) -> tuple[list[str], list[int], list[bytes]]:
    """Keys, labels and JPEGs of one shard, in shard order (the training reader's own tar code)."""
    keys, labels, jpegs = [], [], []
    for sample in ShardSet.open(uri).read_samples(ShardTask(name, count)):
        keys.append(sample["__key__"])
        labels.append(int(sample["cls"]))
        jpegs.append(sample["jpg"])
    return keys, labels, jpegs


def extract_shard(uri: str, name: str, count: int, spec: dict, weights: bytes) -> dict:
    """Features of every sample of one shard: the body of one Ray task per shard."""
    keys, labels, jpegs = shard_samples(uri, name, count)
    features = extract_jpegs(jpegs, weights=weights, **spec)
    return {"keys": keys, "labels": labels, "vectors": features[spec["cuts"][0]][0]}


def extract_files(paths: Sequence[str], spec: dict, weights: bytes, size: int, quality: int):
    """Decode files as the shards hold images, then extract: one Ray task per chunk."""
    result = extract_chunk(
        paths, weights=weights, size=size, quality=quality, keep_jpegs=False, **spec
    )
    return {"reasons": result["reasons"], "vectors": result["features"][spec["cuts"][0]][0]}


# --- the whole source -------------------------------------------------------------------------


def extract(
    run: str,
    source: str,
    *,
    layer: str = "fc7",
    out: str | None = None,
    pool: str = "flatten",
    split: str = "all",
    layout: str = "auto",
    executor: str = "auto",
    ray_min_images: int = 500,
    address: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Extract ``layer`` of ``run``'s model for every image of ``source`` and write Parquet.

    Returns a summary: out, rows, dim, layer, executor, rejected [(path, reason)], seconds.

    Raises:
        ConfigError: unknown layer, pool, executor; DatasetError: unusable source.
    """
    from convplat.progress import progress_bar

    started = time.perf_counter()
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if pool not in POOLS:
        raise ConfigError(f"--pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: expected >= 1, got {batch_size}")
    checkpoint = load_checkpoint(run)
    with torch.device("meta"):
        from convplat.training.models import create_model

        shape_model = create_model(checkpoint.model, num_classes=checkpoint.num_classes)
    name = resolve_layer(shape_model, layer)  # fails early, before any work
    dim = layer_dims(shape_model, (layer,), pool, last_conv_alias=False)[layer]
    mean, quality = _mean_and_quality(checkpoint)
    src = open_source(source, split, layout)
    if src.count == 0:
        raise DatasetError(f"{source}: no images to extract")
    spec = dict(
        model_name=checkpoint.model,
        num_classes=checkpoint.num_classes,
        mean=mean,
        input_scale=checkpoint.input_scale,
        cuts=(layer,),
        flip=False,
        batch_size=batch_size,
        device=device,
        pool=pool,
        last_conv_alias=False,
    )
    use_ray = executor == "ray" or (
        executor == "auto" and (src.count >= ray_min_images or address is not None)
    )
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(f"{name} features", total=src.count, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)

        size = int(mean.shape[0])
        if use_ray:
            result = _run_ray(src, spec, checkpoint.weights, size, quality, address, advance)
        else:
            result = _run_local(src, spec, checkpoint.weights, size, quality, advance)
    if not result["keys"]:
        path, reason = result["rejected"][0]
        raise DatasetError(f"{source}: no decodable images (e.g. {path}: {reason})")
    vectors = result["vectors"].reshape(len(result["keys"]), dim)
    meta = {
        "run": checkpoint.run_dir,
        "weights": checkpoint.file,
        "model": checkpoint.model,
        "layer": name,
        "pool": pool if name.startswith("conv") else "flatten",
        "dim": dim,
        "source": src.uri,
        "source_kind": src.kind,
        "split": split if src.kind == "shards" else None,
        "classes": src.classes,
        "rejected": len(result["rejected"]),
    }
    target = out or os.path.join(checkpoint.run_dir, "features", f"{_stem(source)}-{name}.parquet")
    write_features(target, result["keys"], result["labels"], vectors, meta)
    return {
        "out": target,
        "rows": len(result["keys"]),
        "dim": dim,
        "layer": name,
        "executor": "ray" if use_ray else "local",
        "rejected": result["rejected"],
        "seconds": time.perf_counter() - started,
    }


def _stem(source: str) -> str:
    return os.path.basename(os.path.normpath(source.split("://")[-1])) or "source"


def _mean_and_quality(checkpoint: Checkpoint) -> tuple[np.ndarray, int]:
    """The mean image the run was trained with, and its shards' JPEG quality."""
    try:
        mean = np.asarray(load_stats(checkpoint.data)["mean"], np.float32)
    except DatasetError as exc:
        raise DatasetError(
            f"{exc} (the mean image of {checkpoint.run_dir}'s training data is needed to "
            "preprocess images exactly as in training)"
        ) from None
    try:
        quality = int(read_manifest(checkpoint.data).get("quality", DEFAULT_QUALITY))
    except DatasetError:
        quality = DEFAULT_QUALITY
    return mean, quality


def _run_local(
    src: Source, spec: dict, weights: bytes, size: int, quality: int, advance: Callable
) -> dict:
    """Everything in this process (on cuda when present): the baseline and small sources."""
    keys: list[str] = []
    labels: list[int] = []
    parts: list[np.ndarray] = []
    rejected: list[tuple[str, str]] = []
    if src.kind == "shards":
        for name, count in src.shards:
            res = extract_shard(src.uri, name, count, spec, weights)
            keys += res["keys"]
            labels += res["labels"]
            parts.append(res["vectors"])
            advance(count)
    else:
        step = 256  # one model build per chunk, as a Ray task would
        for start in range(0, len(src.paths), step):
            res = extract_files(src.paths[start : start + step], spec, weights, size, quality)
            _collect_files(src, start, res, keys, labels, parts, rejected)
            advance(len(res["reasons"]))
    return _joined(keys, labels, parts, rejected)


def _run_ray(
    src: Source,
    spec: dict,
    weights: bytes,
    size: int,
    quality: int,
    address: str | None,
    advance: Callable,
) -> dict:
    """One Ray task per shard, or per chunk of files (about two per CPU; one GPU each when the
    cluster has GPUs); the weights and mean image go to the object store once."""
    import ray

    from convplat.cluster import ensure_ray

    ensure_ray(address)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    options: dict = {"num_cpus": 1, "max_retries": 2}
    if gpus:
        options["num_gpus"] = 1
    else:
        spec = {**spec, "device": "cpu"}
    weights_ref = ray.put(weights)
    spec = {**spec, "mean": ray.put(spec["mean"])}
    if src.kind == "shards":
        task = ray.remote(_shard_task).options(**options)
        pending = {
            task.remote(src.uri, name, count, spec, weights_ref): (i, count)
            for i, (name, count) in enumerate(src.shards)
        }
    else:
        chunk = max(16, math.ceil(len(src.paths) / (2 * (gpus or cpus))))
        task = ray.remote(_files_task).options(**options)
        pending = {
            task.remote(src.paths[s : s + chunk], spec, weights_ref, size, quality): (s, 0)
            for s in range(0, len(src.paths), chunk)
        }
    results: dict[int, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            at, count = pending.pop(ref)
            results[at] = ray.get(ref)
            advance(count or len(results[at]["reasons"]))
    keys: list[str] = []
    labels: list[int] = []
    parts: list[np.ndarray] = []
    rejected: list[tuple[str, str]] = []
    for at in sorted(results):
        res = results[at]
        if src.kind == "shards":
            keys += res["keys"]
            labels += res["labels"]
            parts.append(res["vectors"])
        else:
            _collect_files(src, at, res, keys, labels, parts, rejected)
    return _joined(keys, labels, parts, rejected)


def _shard_task(uri: str, name: str, count: int, spec: dict, weights: bytes) -> dict:
    return extract_shard(uri, name, count, _resolved(spec), weights)


def _files_task(paths, spec: dict, weights: bytes, size: int, quality: int) -> dict:
    return extract_files(paths, _resolved(spec), weights, size, quality)


def _resolved(spec: dict) -> dict:
    """Ray resolves top-level ObjectRefs only; the mean image travels nested in the spec."""
    import ray

    mean = spec["mean"]
    return {**spec, "mean": ray.get(mean) if isinstance(mean, ray.ObjectRef) else mean}


def _collect_files(src: Source, start: int, res: dict, keys, labels, parts, rejected) -> None:
    for offset, reason in enumerate(res["reasons"]):
        i = start + offset
        if reason is None:
            keys.append(src.keys[i])
            labels.append(src.labels[i])
        else:
            rejected.append((src.paths[i], reason))
    parts.append(res["vectors"])


def _joined(keys, labels, parts, rejected) -> dict:
    vectors = np.concatenate(parts) if parts else np.empty((0, 0), np.float32)  # (N, dim)
    return {"keys": keys, "labels": labels, "vectors": vectors, "rejected": rejected}


# --- Parquet ----------------------------------------------------------------------------------


def write_features(
    out: str, keys: Sequence[str], labels: Sequence[int], vectors: np.ndarray, meta: dict
) -> None:
    """key, label, vector (fixed_size_list<float32>[dim]) to ``out`` (a path or URI), atomically."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, dim = vectors.shape
    table = pa.table(
        {
            "key": pa.array(list(keys), pa.string()),
            "label": pa.array(list(labels), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    ).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    parent, _, name = out.rstrip("/").rpartition("/")
    resolve(parent or ".").write_bytes(name, buffer.getvalue())


def read_features(path: str) -> dict:
    """A features file back: keys, labels (N,), vectors (N, dim) float32 and its metadata."""
    location = resolve(path.rpartition("/")[0] or ".")
    table = pq.read_table(io.BytesIO(location.read_bytes(path.rpartition("/")[2])))
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    meta = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return {
        "keys": table.column("key").to_pylist(),
        "labels": table.column("label").to_numpy(),
        "vectors": flat.astype(np.float32, copy=False).reshape(len(table), dim),
        "meta": meta,
    }
