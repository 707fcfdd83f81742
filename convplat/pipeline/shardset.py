"""The reading half of the shard format `pipeline/shards.py` writes: an opened shard set.

:class:`ShardSet` checks ``manifest.json``'s structure once when it is opened, and every
read cheaply against it: a shard's byte size before its first byte, its sample count after
its last. Every failure is one :class:`~convplat.errors.DatasetError` line naming the file,
a plain picklable exception (webdataset's own errors carry the open stream and cannot cross
a process or a Ray worker boundary). :func:`verify` is the full check: it re-hashes every
shard against the manifest's sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
from webdataset.tariterators import group_by_keys, tar_file_expander

from convplat.errors import DatasetError
from convplat.storage import Location, resolve

MANIFEST = "manifest.json"
STATS = "stats.npz"
READ_BUFFER = 1 << 20
IMAGE_AND_LABEL = (".jpg", ".cls")
WITH_METADATA = (".jpg", ".cls", ".json")  # + boxes, box labels, source size

# Errors a damaged or missing shard raises while it is streamed (pyarrow's are OSError or
# ValueError subclasses); anything else is a bug and keeps its traceback.
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError)


# --------------------------------------------------------------------------- shard planning
@dataclass(frozen=True)
class ShardTask:
    """One slot's share of one shard: samples ``i`` with ``i % parts == part``."""

    name: str
    count: int
    parts: int = 1
    part: int = 0

    @property
    def samples(self) -> int:
        return len(range(self.part, self.count, self.parts))


def assign_shards(shards: list[tuple[str, int]], slots: int) -> list[list[ShardTask]]:
    """Split shards over ``slots`` (rank, worker) slots so no slot is left without data.

    With at least as many shards as slots, slot ``s`` reads shards ``s, s + slots, ...``.
    With fewer, slots wrap around the shard list and the slots sharing a shard take disjoint
    interleaved parts of it, so the union over slots is still every sample exactly once.
    """
    if slots < 1:
        raise ValueError(f"expected at least one slot, got {slots}")
    count = len(shards)
    if count >= slots:
        return [[ShardTask(n, c) for n, c in shards[slot::slots]] for slot in range(slots)]
    plan = []
    for slot in range(slots):
        name, samples = shards[slot % count]
        sharing = len(range(slot % count, slots, count))
        plan.append([ShardTask(name, samples, sharing, slot // count)])
    return plan


# --------------------------------------------------------------------------- manifest
def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_manifest(manifest, where: str) -> dict:
    """``manifest`` if it has the structure readers rely on, else a DatasetError naming
    ``where`` and the first thing that is wrong."""

    def bad(what: str, got) -> DatasetError:
        shown = json.dumps(got)[:60] if not isinstance(got, str | int | float) else repr(got)
        return DatasetError(f"{where}: expected {what}, got {shown}")

    if not isinstance(manifest, dict):
        raise DatasetError(f"{where}: expected a JSON object, got a {type(manifest).__name__}")
    size = manifest.get("size")
    if not _is_count(size) or size < 1:
        raise bad('"size" a positive integer', size)
    if "classes" in manifest and not isinstance(manifest["classes"], list):
        raise bad('"classes" a list', manifest["classes"])
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        raise bad('"splits" an object of splits', splits)
    for split, info in splits.items():
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
            raise bad(f'"splits.{split}" an object with a "shards" list', info)
        if not _is_count(info.get("count", 0)):
            raise bad(f'"splits.{split}.count" a count', info.get("count"))
        for shard in info["shards"]:
            if not (
                isinstance(shard, dict)
                and isinstance(shard.get("name"), str)
                and "/" not in shard["name"]
                and _is_count(shard.get("count"))
                and _is_count(shard.get("bytes", 0))
            ):
                raise bad(f'"splits.{split}.shards" entries {{name, count[, bytes]}}', shard)
    return manifest


def read_manifest(shard_dir: str | os.PathLike) -> dict:
    """The ``manifest.json`` that ``convplat prepare`` wrote (local path or pyarrow URI),
    checked for the structure readers rely on."""
    location = resolve(shard_dir)
    try:
        payload = location.read_bytes(MANIFEST)
    except (FileNotFoundError, NotADirectoryError):  # missing, or a file given for the dir
        raise DatasetError(
            f"no manifest.json in {location.uri}: expected a directory written by "
            "`convplat prepare`"
        ) from None
    where = location.child(MANIFEST).uri
    try:
        manifest = json.loads(payload)
    except ValueError as exc:
        raise DatasetError(f"unreadable manifest.json in {location.uri}: {exc}") from None
    return check_manifest(manifest, where)


def load_stats(shard_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of ``stats.npz``: ``mean`` (S, S, 3), ``rgb_mean``, ``eigval``, ``eigvec``."""
    location = resolve(shard_dir)
    try:
        payload = location.read_bytes(STATS)
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetError(
            f"no stats.npz in {location.uri}: expected a directory written by `convplat prepare`"
        ) from None
    try:
        with np.load(io.BytesIO(payload)) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise DatasetError(
            f"unreadable {location.child(STATS).uri}: {exc} (re-run `convplat prepare`)"
        ) from None


def split_shards(manifest: dict, split: str) -> list[tuple[str, int]]:
    """``(shard name, sample count)`` of a split's non-empty shards, in manifest order."""
    info = manifest.get("splits", {}).get(split)
    if not info or not info.get("count"):
        have = sorted(manifest.get("splits", {}))
        raise DatasetError(f"the shards have no {split!r} samples (splits present: {have})")
    return [(s["name"], int(s["count"])) for s in info["shards"] if int(s["count"]) > 0]


# --------------------------------------------------------------------------- reading
def _reason(exc: BaseException) -> str:
    """webdataset appends `` @ <stream repr>`` to the first argument; keep the message."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split(" @ ", 1)[0] or type(exc).__name__


def read_shard_samples(
    location: Location,
    task: ShardTask,
    suffixes: tuple[str, ...] = IMAGE_AND_LABEL,
    *,
    expected_bytes: int | None = None,
) -> Iterator[dict]:
    """Raw samples (dicts of bytes) of one task's share of its shard, in shard order.

    Only members ending in ``suffixes`` are read (by default the json metadata is skipped
    unread). webdataset's tar iterators over a pyarrow stream, so local paths, file:// and
    s3:// / gs:// / hdfs:// shard directories all work. A missing shard, one whose size is
    not ``expected_bytes``, an unreadable tar, or a share whose sample count differs from
    ``task.count``'s raise one DatasetError naming the shard.
    """
    url = location.join(task.name)
    where = location.child(task.name).uri
    info = location.fs.get_file_info(url)
    if info.type != pafs.FileType.File:
        raise DatasetError(f"shard {where} is missing (manifest.json lists it)")
    if expected_bytes is not None and info.size != expected_bytes:
        raise DatasetError(
            f"shard {where} has {info.size} bytes where manifest.json says {expected_bytes}: "
            "it is truncated or was replaced (`convplat verify` checks every shard)"
        )
    produced = 0
    try:
        with location.fs.open_input_stream(url, buffer_size=READ_BUFFER) as stream:
            files = tar_file_expander(
                [{"url": url, "stream": stream}],
                select_files=lambda name: name.endswith(suffixes),
            )
            for index, sample in enumerate(group_by_keys(files)):
                if index % task.parts == task.part:
                    produced += 1
                    yield sample
    except _READ_ERRORS as exc:
        raise DatasetError(f"shard {where} is unreadable: {_reason(exc)}") from None
    if produced != task.samples:
        what = "samples" if task.parts == 1 else f"samples in part {task.part} of {task.parts}"
        raise DatasetError(
            f"shard {where} holds {produced} {what} where manifest.json says {task.samples}: "
            "it is truncated or was replaced (`convplat verify` checks every shard)"
        )


@dataclass(frozen=True)
class ShardSet:
    """An opened shard directory: its checked manifest and the reads it allows.

    Picklable (a pyarrow filesystem and a dict), so loader processes and Ray tasks get it
    whole and check every shard they open against the same manifest.
    """

    location: Location
    manifest: dict

    @classmethod
    def open(cls, uri: str | os.PathLike | Location) -> ShardSet:
        location = uri if isinstance(uri, Location) else resolve(uri)
        return cls(location, read_manifest(location.uri))

    @property
    def uri(self) -> str:
        return self.location.uri

    @property
    def size(self) -> int:
        """The side of the ``S x S`` frame (the mean image's size)."""
        return int(self.manifest["size"])

    @property
    def classes(self) -> list[dict]:
        return list(self.manifest.get("classes", []))

    @property
    def splits(self) -> list[str]:
        return sorted(self.manifest["splits"])

    def stats(self) -> dict[str, np.ndarray]:
        return load_stats(self.location.uri)

    def shards(self, split: str) -> list[tuple[str, int]]:
        """``(name, count)`` of the split's non-empty shards; DatasetError when it has none."""
        return split_shards(self.manifest, split)

    def count(self, split: str) -> int:
        return sum(count for _, count in self.shards(split))

    def shard_bytes(self, name: str) -> int | None:
        """The byte size manifest.json records for shard ``name`` (None if it has none)."""
        for info in self.manifest["splits"].values():
            for shard in info["shards"]:
                if shard["name"] == name:
                    return shard.get("bytes")
        return None

    def read_samples(
        self, task: ShardTask, suffixes: tuple[str, ...] = IMAGE_AND_LABEL
    ) -> Iterator[dict]:
        """:func:`read_shard_samples`, with the shard's size checked against the manifest."""
        return read_shard_samples(
            self.location, task, suffixes, expected_bytes=self.shard_bytes(task.name)
        )


# --------------------------------------------------------------------------- full check
@dataclass
class VerifyReport:
    """What :func:`verify` found: shards and bytes checked, one line per problem."""

    uri: str
    shards: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _hash(location: Location, name: str, on_bytes) -> str:
    digest = hashlib.sha256()
    with location.fs.open_input_stream(location.join(name), buffer_size=READ_BUFFER) as stream:
        while chunk := stream.read(READ_BUFFER):
            digest.update(chunk)
            on_bytes(len(chunk))
    return digest.hexdigest()


def verify(uri: str | os.PathLike, progress: bool = True) -> VerifyReport:
    """Re-hash every shard the manifest lists against its sha256 (and size), and check that
    ``stats.npz`` loads. Problems are collected, not raised, so one run lists them all."""
    from convplat.progress import progress_bar

    shard_set = ShardSet.open(uri)
    location = shard_set.location
    report = VerifyReport(location.uri)
    entries = [s for info in shard_set.manifest["splits"].values() for s in info["shards"]]
    total = sum(int(s.get("bytes", 0)) for s in entries)
    with progress_bar(progress) as bar:
        task = bar.add_task("verify", total=total or None, rate="")
        for shard in entries:
            name, where = shard["name"], location.child(shard["name"]).uri
            info = location.fs.get_file_info(location.join(name))
            if info.type != pafs.FileType.File:
                report.problems.append(f"{where}: missing")
                continue
            report.shards += 1
            report.bytes += info.size
            if "bytes" in shard and info.size != shard["bytes"]:
                report.problems.append(
                    f"{where}: {info.size} bytes, manifest.json says {shard['bytes']}"
                )
                bar.advance(task, shard["bytes"])
                continue
            try:
                digest = _hash(location, name, lambda n: bar.advance(task, n))
            except OSError as exc:
                report.problems.append(f"{where}: unreadable: {exc}")
                continue
            if "sha256" in shard and digest != shard["sha256"]:
                report.problems.append(f"{where}: sha256 differs from manifest.json")
    try:
        shard_set.stats()
    except DatasetError as exc:
        report.problems.append(str(exc))
    return report
