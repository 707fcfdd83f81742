"""Local paths or pyarrow filesystem URIs (s3://, gs://, hdfs://, file://), with atomic writes.

Every output file is written to a temporary name beside its target and renamed when complete,
so a killed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs


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
        with self.fs.open_output_stream(tmp) as stream:
            stream.write(data)
        self.fs.move(tmp, final)

    def remove_temporaries(self) -> int:
        """Delete leftovers of killed writers (``.<name>.tmp-*``); returns how many."""
        removed = 0
        selector = pafs.FileSelector(self.path, recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if (
                info.type == pafs.FileType.File
                and ".tmp-" in info.base_name
                and info.base_name.startswith(".")
            ):
                self.fs.delete_file(info.path)
                removed += 1
        return removed


def resolve(uri_or_path: str | os.PathLike) -> Location:
    """A Location for a local path or any URI pyarrow understands."""
    text = os.fspath(uri_or_path)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return Location(fs, path.rstrip("/") or "/", text)
    path = os.path.abspath(text)
    return Location(pafs.LocalFileSystem(), path, path)
