"""WebDataset shards: the seeded plan of which sample goes where, and writing one shard.

`write_shard` is the unit of work a Ray task runs; it never imports Ray. Each shard is
committed in three atomic steps: the tar, then `_parts/<shard>.npz` (statistics partial sums),
then `_parts/<shard>.json` (count, sha256, index rows, rejects). The json is the commit marker
that lets a re-run keep complete shards.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from convplat.errors import ImageDecodeError
from convplat.pipeline.image import (
    MAX_BYTES,
    MAX_PIXELS,
    Geometry,
    process_image,
    transform_boxes_with_index,
)
from convplat.pipeline.outdir import PARTS_DIR, write_error
from convplat.pipeline.readers import Item, display_path
from convplat.pipeline.stats import StatsAccumulator
from convplat.pipeline.tar import ShardTar
from convplat.storage import Location, resolve

if TYPE_CHECKING:
    from convplat.pipeline.plan import PlannedShard


@dataclass(frozen=True)
class ShardSpec:
    """One planned shard: its split, number and the items that go in it, in order."""

    split: str
    index: int
    items: tuple[Item, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


@dataclass(frozen=True)
class ShardOptions:
    """Settings every shard task needs; part of each shard's plan digest.

    ``max_pixels`` (from the file's header) and ``max_bytes`` (its size) reject decompression
    bombs and huge files before they are decoded or read.
    """

    size: int = 256
    quality: int = 90
    crop: bool = True
    source_root: str = ""
    wnids: tuple[str, ...] = ()
    max_pixels: int = MAX_PIXELS
    max_bytes: int = MAX_BYTES


# Limits enter a shard's digest only when they differ from these defaults, so the digests (and
# the sidecars that record them) of outputs written before the limits existed stay the same.
_DIGEST_DEFAULTS = {"max_pixels": MAX_PIXELS, "max_bytes": MAX_BYTES}


@dataclass
class ShardInfo:
    """What a finished shard holds; saved beside it so a re-run can keep it."""

    name: str
    split: str
    count: int
    bytes: int
    sha256: str
    digest: str
    rows: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)


def plan_shards(items: list[Item], shard_size: int, seed: int) -> list[ShardSpec]:
    """Spread each split's items over shards in a seeded random order, so shards mix classes.

    The definition of the plan; ``prepare`` builds the same shards from a stream of items
    without holding them (``pipeline.plan.ShardPlan``).
    """
    specs: list[ShardSpec] = []
    for split in sorted({item.split for item in items}):
        split_items = [item for item in items if item.split == split]
        order = shuffle_order(split, len(split_items), seed)
        shuffled = [split_items[i] for i in order]
        for index, start in enumerate(range(0, len(shuffled), shard_size)):
            specs.append(ShardSpec(split, index, tuple(shuffled[start : start + shard_size])))
    return specs


def shuffle_order(split: str, count: int, seed: int) -> np.ndarray:
    """The seeded order of a split's ``count`` items (indices in listing order): shard ``k``
    holds the items at ``order[k * shard_size : (k + 1) * shard_size]``."""
    return np.random.default_rng([seed, _split_salt(split)]).permutation(count)


def _split_salt(split: str) -> int:
    return int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], "little")


def _fields(obj) -> dict:
    """A flat dataclass's fields as a dict, without ``asdict``'s recursive deep copy of every
    box and index row; the JSON written (and so the plan digest) is the same."""
    return {name: getattr(obj, name) for name in _field_names(type(obj))}


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))  # dataclasses.fields is slow to call per item


def plan_digest(spec: ShardSpec, options: ShardOptions) -> str:
    """A fingerprint of what the shard should contain; a kept shard must match it."""
    settings = {
        k: v
        for k, v in _fields(options).items()
        if k not in _DIGEST_DEFAULTS or v != _DIGEST_DEFAULTS[k]
    }
    payload = json.dumps(
        {
            "name": spec.name,
            "options": settings,
            "items": [_fields(item) for item in spec.items],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def plan_fingerprint(specs: Iterable[ShardSpec | PlannedShard], digests: dict[str, str]) -> str:
    """One fingerprint of a whole plan (every shard's name and digest), kept in the manifest:
    an output whose manifest records another fingerprint describes other shards."""
    payload = json.dumps([[spec.name, digests[spec.name]] for spec in specs])
    return hashlib.sha256(payload.encode()).hexdigest()


def write_shard(
    spec: ShardSpec, out: str, options: ShardOptions
) -> tuple[ShardInfo, dict[str, np.ndarray]]:
    """Prepare every item of ``spec`` and write the shard tar and its sidecars atomically.

    Damaged files are recorded in ``rejected`` and skipped; they never fail the task.
    Returns the shard's info and its statistics partial sums (train shards only, else empty).
    """
    location = resolve(out)
    digest = plan_digest(spec, options)
    stats = StatsAccumulator(options.size) if spec.split == "train" else None
    tar = ShardTar()
    rows: list[dict] = []
    rejected: list[dict] = []
    processed: list[tuple[Item, bytes, Geometry]] = []
    for item in spec.items:
        try:
            data = _read_capped(item.path, options.max_bytes)
            sample = process_image(
                data, options.size, options.quality, options.crop, options.max_pixels
            )
        except (ImageDecodeError, OSError) as exc:
            reason = (
                exc.reason
                if isinstance(exc, ImageDecodeError)
                else f"unreadable: {exc.strerror or exc}"
            )
            rejected.append({"path": _relative(item.path, options.source_root), "reason": reason})
            continue
        if stats is not None:
            stats.add(sample.pixels)
        processed.append((item, sample.jpeg, sample.geometry))
    # Records and tar members in a second, pure-Python pass: interleaved with the image work,
    # whose buffers evict the interpreter's state from the caches every image, this
    # bookkeeping cost several times its tight-loop cost (JSON encoding ~35 us vs ~5 us per
    # sample); two passes made the shard task 2-3 % faster (benchmarks/prepare.py, row b3).
    for item, jpeg, geom in processed:
        relpath = _relative(item.path, options.source_root)
        kept = transform_boxes_with_index(item.boxes, geom)
        meta = {
            "key": item.key,
            "label": item.label,
            "wnid": options.wnids[item.label] if options.wnids else "",
            "width": geom.src_w,
            "height": geom.src_h,
            "boxes": [box for _, box in kept],
            "box_labels": [item.box_labels[i] for i, _ in kept] if item.box_labels else [],
            "source": relpath,
        }
        tar.write(
            item.key,
            {
                "jpg": jpeg,
                "cls": str(item.label).encode(),
                "json": json.dumps(meta, sort_keys=True).encode(),
            },
        )
        rows.append(
            {
                "key": item.key,
                "split": spec.split,
                "shard": spec.name,
                "label": item.label,
                "wnid": meta["wnid"],
                "width": geom.src_w,
                "height": geom.src_h,
                "boxes": meta["boxes"],
                "source": relpath,
            }
        )
    payload = tar.getvalue()
    info = ShardInfo(
        spec.name,
        spec.split,
        len(rows),
        len(payload),
        hashlib.sha256(payload).hexdigest(),
        digest,
        rows,
        rejected,
    )
    partial = stats.to_arrays() if stats is not None else {}
    part = io.BytesIO()
    np.savez(part, **partial)
    try:
        location.write_bytes(spec.name, payload)
        location.write_bytes(f"{PARTS_DIR}/{spec.name}.npz", part.getvalue())
        location.write_bytes(
            f"{PARTS_DIR}/{spec.name}.json", json.dumps(_fields(info), sort_keys=True).encode()
        )
    except OSError as exc:  # disk full, permissions ...: one picklable line, not a traceback
        raise write_error(f"{spec.name} in {out}", exc) from None
    return info, partial


def load_complete_shard(
    spec: ShardSpec | PlannedShard,
    out: str | Location,
    options: ShardOptions,
    digest: str | None = None,
) -> ShardInfo | None:
    """The saved info of a shard that is complete and matches the plan, else None.

    ``digest`` is ``plan_digest(spec, options)`` when the caller has it already (always, for
    a ``PlannedShard``, whose items are not at hand).
    """
    location = out if isinstance(out, Location) else resolve(out)
    marker = f"{PARTS_DIR}/{spec.name}.json"
    if not (
        location.exists(marker)
        and location.exists(spec.name)
        and location.exists(f"{PARTS_DIR}/{spec.name}.npz")
    ):
        return None
    try:
        info = ShardInfo(**json.loads(location.read_bytes(marker)))
    except (ValueError, TypeError):
        return None
    expected = digest if digest is not None else plan_digest(spec, options)
    if info.digest != expected or location.size(spec.name) != info.bytes:
        return None
    if hashlib.sha256(location.read_bytes(spec.name)).hexdigest() != info.sha256:
        return None
    return info


def load_partial_stats(name: str, out: str | Location) -> dict[str, np.ndarray]:
    """The statistics partial sums saved beside shard ``name``."""
    location = out if isinstance(out, Location) else resolve(out)
    with np.load(io.BytesIO(location.read_bytes(f"{PARTS_DIR}/{name}.npz"))) as arrays:
        return {key: arrays[key] for key in arrays.files}


def _read_capped(path: str, max_bytes: int) -> bytes:
    """The file's bytes, refused (before reading) when it holds more than ``max_bytes``."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size <= max_bytes:
            data = handle.read(max_bytes + 1)
            size = len(data)  # it may have grown since fstat
        if size > max_bytes:
            raise ImageDecodeError(f"file too large ({size:,} bytes > max_bytes {max_bytes:,})")
    return data


def _relative(path: str, root: str) -> str:
    """``path`` below ``root``, as valid UTF-8 (see ``display_path``) for JSON and Parquet."""
    if root:
        try:
            path = os.path.relpath(path, root)
        except ValueError:
            pass
    return display_path(path)
