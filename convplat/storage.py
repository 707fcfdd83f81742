"""Local paths or pyarrow filesystem URIs (s3://, gs://, hdfs://, file://), with atomic writes.

Every output file is written to a temporary name beside its target and renamed when complete,
so a killed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

# The temporary name write_bytes gives a file before renaming it into place.
TEMPORARY = re.compile(r"\.(.+)\.tmp-[0-9a-f]{32}")


@dataclass(frozen=True)
class Location:
    """A directory on some filesystem: ``fs`` plus a path inside it."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> str:
        """A path inside ``fs`` (not a URI): for calls on ``self.fs`` only."""
        return "/".join([self.path.rstrip("/"), *parts])

    def child(self, *parts: str) -> Location:
        """The Location of ``parts`` below this one, on the same filesystem and URI scheme.

        Use this (not ``join``) for anything handed on as a URI: a run on ``s3://bucket/runs``
        keeps its outputs on ``s3://bucket/runs/...``, not in a local relative path.
        """
        parts = tuple(p.strip("/") for p in parts if p.strip("/"))
        if not parts:
            return self
        return Location(self.fs, self.join(*parts), "/".join([self.uri.rstrip("/"), *parts]))

    def exists(self, name: str) -> bool:
        """True when ``name`` is a file (directories: :meth:`is_dir`)."""
        return self.fs.get_file_info(self.join(name)).type == pafs.FileType.File

    def is_dir(self, name: str = "") -> bool:
        """True when ``name`` (or this location itself) is a directory."""
        path = self.join(name) if name else self.path
        return self.fs.get_file_info(path).type == pafs.FileType.Directory

    def size(self, name: str) -> int:
        return self.fs.get_file_info(self.join(name)).size

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.join(name)) as stream:
            return stream.read()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``name`` atomically (temp file, then rename)."""
        final = self.join(name)
        parent = final.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{final.rsplit('/', 1)[1]}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(tmp) as stream:
                stream.write(data)
            self.fs.move(tmp, final)
        except BaseException:  # a full disk: do not leave the half-written file holding space
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise

    def open_atomic(self, name: str) -> AtomicFile:
        """A stream for writing ``name`` piece by piece; it appears under its name only on
        :meth:`AtomicFile.commit` (the same temporary name and rename as :meth:`write_bytes`)."""
        final = self.join(name)
        parent = final.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{final.rsplit('/', 1)[1]}.tmp-{uuid.uuid4().hex}"
        return AtomicFile(self.fs, tmp, final, self.fs.open_output_stream(tmp))

    def remove_temporaries(self, *subdirs: str) -> int:
        """Delete leftovers of killed :meth:`write_bytes` calls; returns how many.

        Only names of exactly the shape ``write_bytes`` uses (``.<name>.tmp-<32 hex>``), and only
        directly in this directory and in ``subdirs`` (not below them): a user's own files that
        merely look alike, or live deeper, are never touched.
        """
        removed = 0
        for sub in ("", *subdirs):
            path = self.join(sub) if sub else self.path
            selector = pafs.FileSelector(path, recursive=False, allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                if info.type == pafs.FileType.File and TEMPORARY.fullmatch(info.base_name):
                    self.fs.delete_file(info.path)
                    removed += 1
        return removed

    def names(self, name: str = "") -> list[str]:
        """Sorted names of the entries directly in this directory (or in ``name``); [] if none."""
        path = self.join(name) if name else self.path
        selector = pafs.FileSelector(path, recursive=False, allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    def delete(self, name: str) -> bool:
        """Delete the file ``name`` if it exists; returns whether it did."""
        try:
            self.fs.delete_file(self.join(name))
        except FileNotFoundError:
            return False
        return True

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Create ``name`` with ``data`` only if it does not exist; False if it does.

        Atomic on a local filesystem (``O_CREAT | O_EXCL``); object stores have no exclusive
        create, so there it is a check then a write (good enough against a second run started
        by the same user a moment later, not against a race within milliseconds).
        """
        target = self.join(name)
        if isinstance(self.fs, pafs.LocalFileSystem):
            try:
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        if self.fs.get_file_info(target).type != pafs.FileType.NotFound:
            return False
        self.write_bytes(name, data)
        return True


@dataclass
class AtomicFile:
    """An output stream to a temporary file that :meth:`commit` renames into place."""

    fs: pafs.FileSystem
    tmp: str
    final: str
    stream: object

    def commit(self) -> None:
        self.stream.close()
        self.fs.move(self.tmp, self.final)

    def abort(self) -> None:
        """Close and delete the temporary file (the target is left as it was)."""
        try:
            self.stream.close()
        finally:
            try:
                self.fs.delete_file(self.tmp)
            except OSError:
                pass


def resolve(uri_or_path: str | os.PathLike) -> Location:
    """A Location for a local path or any URI pyarrow understands."""
    text = os.fspath(uri_or_path)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return Location(fs, path.rstrip("/") or "/", text)
    path = os.path.abspath(text)
    return Location(pafs.LocalFileSystem(), path, path)
