"""`convplat features RUN SOURCE --layer fc7`: any layer's activations, streamed to Parquet.

OverFeat's "feature extractor" and ZFNet Table 7's layer-n features, for use in other tools.
SOURCE is a shard set written by `convplat prepare` (one Ray task per shard) or a folder of
images (class folders, any layout `convplat prepare` reads, or a flat folder; chunks of files
per Ray task). Images are prepared exactly as in training (shards: as stored; files: shorter
side to the shards' size, centre crop, JPEG at the shards' quality) and the model sees the
centre ``input_size`` crop, mean-image subtracted. The extraction is transfer's own code
(``convplat.transfer.extract``: ``extract_jpegs`` / ``extract_chunk``), so `convplat
transfer`'s cached features and these are the same numbers.

Output: a directory. Each task writes its own rows as ``part-NNNNNN.parquet`` (one per shard
or chunk of files, numbered in source order) and returns only a row count, so the driver
never holds a vector: its memory does not grow with the number of images. ``_features.json``
is written last (run, model, layer, pool, dim, source, classes, rows, parts, rejected files);
pyarrow and pandas skip ``_``-names, so ``pd.read_parquet(out)`` reads every row in one call.
Columns: ``key`` (string), ``label`` (int64; -1 for a flat folder), ``vector``
(fixed_size_list<float32>[dim]); every part's schema metadata (key ``convplat``) holds the
same description. Each file is written atomically.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from convplat.cluster import RAY_MIN_IMAGES, use_ray
from convplat.config import EXECUTORS
from convplat.config.validate import check_device
from convplat.errors import ConfigError, DatasetError
from convplat.pipeline.outdir import OutputError
from convplat.pipeline.readers import IMAGE_EXTENSIONS, read_dataset
from convplat.pipeline.shardset import ShardSet, ShardTask
from convplat.storage import Location, resolve
from convplat.training.models.pretrained import TORCHVISION_ALEXNET, build_network
from convplat.transfer.checkpoint import Checkpoint, load_checkpoint
from convplat.transfer.extract import StoredWeights, extract_chunk, extract_jpegs
from convplat.transfer.extractor import POOLS, layer_dims, resolve_layer

METADATA_KEY = b"convplat"
SUMMARY = "_features.json"
FILES_PER_CHUNK = 256  # in-process: one model build per chunk, as a Ray task would
_OURS = re.compile(r"(part-\d{6}\.parquet|_features\.json|\..*\.tmp-[0-9a-f]{32})")


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
    # Absolute: the paths go to Ray tasks, maybe on other nodes in other working directories.
    entries = sorted(
        (e for e in os.scandir(location.path) if not e.name.startswith(".")),
        key=lambda e: e.name,
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


# --- one task's work: extract, then write its own part ------------------------------------


def shard_samples(uri: str, name: str, count: int) -> tuple[list[str], list[int], list[bytes]]:
    """Keys, labels and JPEGs of one shard, in shard order (the training reader's own tar code,
    checked against the manifest)."""
    keys, labels, jpegs = [], [], []
    for sample in ShardSet.open(uri).read_samples(ShardTask(name, count)):
        keys.append(sample["__key__"])
        labels.append(int(sample["cls"]))
        jpegs.append(sample["jpg"])
    return keys, labels, jpegs


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


@dataclass(frozen=True)
class Part:
    """Where one task writes its rows: the output directory, its part number, the metadata."""

    out: str
    index: int
    meta: dict

    def write(self, keys: Sequence[str], labels: Sequence[int], vectors: np.ndarray) -> int:
        """Write the rows (none: no file) and return how many there were."""
        if len(keys):
            write_part(self.out, part_name(self.index), keys, labels, vectors, self.meta)
        return len(keys)


def extract_shard(uri: str, name: str, count: int, spec: dict, weights: bytes, part: Part):
    """Features of every sample of one shard, written to ``part``: one Ray task's body."""
    keys, labels, jpegs = shard_samples(uri, name, count)
    features = extract_jpegs(jpegs, weights=weights, **spec)
    rows = part.write(keys, labels, features[spec["cuts"][0]][0])
    return {"rows": rows, "images": count, "rejected": []}


def extract_files(
    paths: Sequence[str],
    keys: Sequence[str],
    labels: Sequence[int],
    spec: dict,
    weights: bytes,
    size: int,
    quality: int,
    part: Part,
) -> dict:
    """Decode files as the shards hold images, extract and write the decodable ones to
    ``part``: one Ray task per chunk. Returns rows written and the (path, reason) rejected."""
    result = extract_chunk(
        paths, weights=weights, size=size, quality=quality, keep_jpegs=False, **spec
    )
    ok = [i for i, reason in enumerate(result["reasons"]) if reason is None]
    rows = part.write(
        [keys[i] for i in ok], [labels[i] for i in ok], result["features"][spec["cuts"][0]][0]
    )
    rejected = [(paths[i], r) for i, r in enumerate(result["reasons"]) if r is not None]
    return {"rows": rows, "images": len(paths), "rejected": rejected}


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
    ray_min_images: int = RAY_MIN_IMAGES,
    address: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Extract ``layer`` of ``run``'s model for every image of ``source``, streamed to a
    directory of Parquet files (``out``, default ``RUN/features/<source>-<layer>.parquet/``).

    Returns a summary: out, rows, dim, layer, executor, rejected [(path, reason)], seconds.

    Raises:
        ConfigError: unknown layer, pool, executor, or an ``out`` that is not ours to
            replace; DatasetError: unusable source.
    """
    from convplat.progress import progress_bar

    started = time.perf_counter()
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if pool not in POOLS:
        raise ConfigError(f"--pool: expected one of {', '.join(POOLS)}, got {pool!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size: expected >= 1, got {batch_size}")
    check_device(device)
    checkpoint = load_checkpoint(run, option="RUN")
    with torch.device("meta"):
        shape_model = build_network(checkpoint.model, num_classes=checkpoint.num_classes)
    name = resolve_layer(shape_model, layer)  # fails early, before any work
    dim = layer_dims(shape_model, (layer,), pool, last_conv_alias=False)[layer]
    mean, quality = _mean_and_quality(checkpoint)
    src = open_source(source, split, layout)
    if src.count == 0:
        raise DatasetError(f"{source}: no images to extract")
    # torchvision:alexnet has no run directory (its run_dir is the torch cache): ./features-…
    base = (
        "features-torchvision-alexnet"
        if run == TORCHVISION_ALEXNET
        else os.path.join(checkpoint.run_dir, "features")
    )
    target = out or os.path.join(base, f"{_stem(source)}-{name}.parquet")
    location = _claim_output(target)
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
    }
    on_ray = use_ray(executor, src.count, address, ray_min_images)
    rows, parts, rejects, nodes = 0, [], {}, set()
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(f"{name} features", total=src.count, rate="")
        size = int(mean.shape[0])
        if on_ray:
            results = _run_ray(
                src, spec, checkpoint.weights, size, quality, location, meta, address, nodes
            )
        else:
            results = _run_local(src, spec, checkpoint.weights, size, quality, location, meta)
        for index, result in results:
            rows += result["rows"]
            rejects[index] = result["rejected"]
            if result["rows"]:
                parts.append(part_name(index))
            bar.advance(task, result["images"])
    if on_ray:
        _check_visible(location, parts)
    rejected = [r for index in sorted(rejects) for r in rejects[index]]  # in source order
    if not rows:
        example = f" (e.g. {rejected[0][0]}: {rejected[0][1]})" if rejected else ""
        raise DatasetError(f"{source}: no decodable images{example}")
    summary = {**meta, "rows": rows, "parts": sorted(parts), "rejected": len(rejected)}
    summary["rejected_files"] = [{"path": p, "reason": r} for p, r in rejected]
    location.write_bytes(SUMMARY, json.dumps(summary, indent=1).encode())
    return {
        "out": location.uri,
        "rows": rows,
        "dim": dim,
        "layer": name,
        "executor": "ray" if on_ray else "local",
        "ray_nodes": len(nodes),  # distinct Ray nodes the tasks ran on (0: no Ray)
        "rejected": rejected,
        "seconds": time.perf_counter() - started,
    }


def _check_visible(location: Location, parts: list[str]) -> None:
    """Parts that tasks on other nodes wrote to their own local disks are not here: say so
    rather than write a ``_features.json`` that lists files nobody can read."""
    missing = [name for name in parts if not location.exists(name)]
    if missing:
        raise OutputError(
            f"{len(missing)} part(s) written by the cluster's tasks are not visible under "
            f"{location.uri} (e.g. {missing[0]}): with --address, --out must be storage every "
            "node shares (an s3://, gs://, hdfs:// URI or a shared mount)"
        )


def _claim_output(target: str) -> Location:
    """The output directory, emptied of an earlier export's files (only those: a directory
    holding anything else, or a file, is refused rather than mixed or deleted)."""
    location = resolve(target)
    if location.fs.get_file_info(location.path).type == pafs.FileType.File:
        raise ConfigError(
            f"--out: {location.uri} is a file; features are written as a directory of Parquet "
            "files: choose another --out (or remove the file)"
        )
    if location.is_dir():
        entries = location.fs.get_file_info(pafs.FileSelector(location.path))
        foreign = [e.base_name for e in entries if not _OURS.fullmatch(e.base_name)]
        if foreign:
            raise ConfigError(
                f"--out: {location.uri} holds files `convplat features` did not write "
                f"(e.g. {foreign[0]}): choose an empty or new directory"
            )
        ours = sorted(entries, key=lambda e: e.base_name != SUMMARY)  # invalidate first
        for entry in ours:
            location.fs.delete_file(entry.path)
    try:
        location.fs.create_dir(location.path, recursive=True)
    except OSError as exc:  # a file on the way, read-only, the name too long ...
        raise ConfigError(f"--out: cannot create {location.uri}: {exc.strerror or exc}") from None
    return location


def _stem(source: str) -> str:
    return os.path.basename(os.path.normpath(source.split("://")[-1])) or "source"


def _mean_and_quality(checkpoint: Checkpoint) -> tuple[np.ndarray, int]:
    """The mean image the run was trained with, and its shards' JPEG quality."""
    return checkpoint.mean_and_quality()


def _jobs(
    src: Source, location: Location, meta: dict, chunk: int
) -> Iterator[tuple[int, tuple, Part]]:
    """(part number, the source's task arguments, the part) per shard or chunk of files."""
    if src.kind == "shards":
        for i, (name, count) in enumerate(src.shards):
            yield i, (src.uri, name, count), Part(location.uri, i, meta)
    else:
        for i, start in enumerate(range(0, len(src.paths), chunk)):
            stop = start + chunk
            files = (src.paths[start:stop], src.keys[start:stop], src.labels[start:stop])
            yield i, files, Part(location.uri, i, meta)


def _run_local(
    src: Source,
    spec: dict,
    weights: bytes,
    size: int,
    quality: int,
    location: Location,
    meta: dict,
    address: str | None = None,  # noqa: ARG001 - the same signature as _run_ray
) -> Iterator[tuple[int, dict]]:
    """Everything in this process (on cuda when present), one part at a time."""
    for index, args, part in _jobs(src, location, meta, FILES_PER_CHUNK):
        if src.kind == "shards":
            yield index, extract_shard(*args, spec, weights, part)
        else:
            yield index, extract_files(*args, spec, weights, size, quality, part)


def _run_ray(
    src: Source,
    spec: dict,
    weights: bytes,
    size: int,
    quality: int,
    location: Location,
    meta: dict,
    address: str | None,
    nodes: set[str] | None = None,
) -> Iterator[tuple[int, dict]]:
    """One Ray task per shard, or per chunk of files (about two per CPU; one GPU each when the
    cluster has GPUs); the weights and mean image go to the object store once. Each task
    writes its part and returns a row count, so nothing the size of the features comes back.
    ``nodes`` gets the ids of the Ray nodes the tasks ran on."""
    import ray

    from convplat.cluster import cluster_size, ensure_ray, fan_out

    ensure_ray(address)
    cpus, gpus = cluster_size()
    if not gpus:
        spec = {**spec, "device": "cpu"}
    # Each worker process builds the model once, from the layers up to the cut only.
    weights_ref = StoredWeights.for_cuts(
        weights, spec["model_name"], spec["num_classes"], spec["cuts"], spec["last_conv_alias"]
    )
    spec = {**spec, "mean": ray.put(spec["mean"])}
    chunk = max(16, math.ceil(len(src.paths) / (2 * (gpus or cpus))))
    fn = _shard_task if src.kind == "shards" else _files_task
    extra = (spec, weights_ref) if src.kind == "shards" else (spec, weights_ref, size, quality)
    jobs = ((i, (*args, *extra, part), {}) for i, args, part in _jobs(src, location, meta, chunk))
    yield from fan_out(fn, jobs, num_cpus=1, num_gpus=1 if gpus else 0, nodes=nodes)


def _shard_task(uri: str, name: str, count: int, spec: dict, weights: bytes, part: Part) -> dict:
    return extract_shard(uri, name, count, _resolved(spec), weights, part)


def _files_task(paths, keys, labels, spec, weights, size, quality, part) -> dict:
    return extract_files(paths, keys, labels, _resolved(spec), weights, size, quality, part)


def _resolved(spec: dict) -> dict:
    """Ray resolves top-level ObjectRefs only; the mean image travels nested in the spec."""
    import ray

    mean = spec["mean"]
    return {**spec, "mean": ray.get(mean) if isinstance(mean, ray.ObjectRef) else mean}


# --- Parquet ----------------------------------------------------------------------------------


def write_part(
    out: str,
    name: str,
    keys: Sequence[str],
    labels: Sequence[int],
    vectors: np.ndarray,
    meta: dict,
) -> None:
    """key, label, vector (fixed_size_list<float32>[dim]) to ``out/name``, atomically."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, dim = vectors.shape
    table = pa.table(
        {
            "key": pa.array(list(keys), pa.string()),
            "label": pa.array(list(labels), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    ).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    buffer = io.BytesIO()  # one part: a shard's or a chunk's rows, never the whole output
    pq.write_table(table, buffer)
    resolve(out).write_bytes(name, buffer.getvalue())


def read_features(path: str) -> dict:
    """An export back, parts in source order: keys, labels (N,), vectors (N, dim) float32 and
    its metadata (``_features.json``). Holds everything in memory: for large exports read the
    directory with pyarrow.dataset in batches instead."""
    location = resolve(path)
    try:
        meta = json.loads(location.read_bytes(SUMMARY))
    except FileNotFoundError:
        raise DatasetError(
            f"no {SUMMARY} in {location.uri}: not a finished `convplat features` output"
        ) from None
    tables = [pq.read_table(io.BytesIO(location.read_bytes(name))) for name in meta["parts"]]
    table = pa.concat_tables(tables)
    column = table.column("vector").combine_chunks()
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return {
        "keys": table.column("key").to_pylist(),
        "labels": table.column("label").to_numpy(),
        "vectors": flat.astype(np.float32, copy=False).reshape(len(table), dim),
        "meta": meta,
    }
