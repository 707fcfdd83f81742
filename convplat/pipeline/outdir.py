"""What `prepare` may do in its ``--out``: claim it, lock it, and change only what it wrote.

A shard directory belongs to prepare (DESIGN.md, "Ownership and safety"): it refuses a
non-empty directory that is not its own (unless ``overwrite``), never overwrites a foreign
``manifest.json``, lets one run at a time write it, removes the manifest before it changes any
shard when the plan changed (so a killed run never leaves a manifest describing other shards),
and deletes only its own names: ``train-NNNNNN.tar``-style shards, their ``_parts/`` sidecars
and its own temporaries.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pyarrow.fs as pafs

from convplat.errors import ConvplatError
from convplat.storage import Location

MANIFEST = "manifest.json"
PARTS_DIR = "_parts"
# Written when prepare first claims a directory, so an interrupted first run is still its own.
OWNER_MARKER = ".convplat-shards"
LOCK = ".convplat-prepare.lock"
SHARD_NAME = re.compile(r"(train|val|test)-\d{6}\.tar")
PART_NAME = re.compile(r"((?:train|val|test)-\d{6}\.tar)\.(?:json|npz)")


class OutputError(ConvplatError):
    """``--out`` cannot be used or written (a file, foreign data, locked, disk full ...)."""


def write_error(where: str, exc: OSError) -> OutputError:
    """One line for a failed write (disk full, permission denied, read-only filesystem ...)."""
    return OutputError(f"cannot write {where}: {exc.strerror or exc}")


def read_manifest(location: Location) -> dict | None:
    """The ``manifest.json`` in ``location`` if it is convplat's; None when there is none.

    Raises:
        OutputError: there is a manifest.json that convplat did not write (or cannot parse).
    """
    if not location.exists(MANIFEST):
        return None
    try:
        manifest = json.loads(location.read_bytes(MANIFEST))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("tool") != "convplat":
        raise OutputError(
            f"--out {location.uri} holds a manifest.json that convplat did not write; "
            "choose another --out (prepare never overwrites it)"
        )
    return manifest


def claim(location: Location, overwrite: bool = False) -> None:
    """Make sure ``location`` is a directory prepare may write, creating it if missing.

    Raises:
        OutputError: ``--out`` is a file, holds a foreign manifest.json, or is a non-empty
            directory without prepare's marker or manifest (unless ``overwrite``).
    """
    kind = location.fs.get_file_info(location.path).type
    if kind == pafs.FileType.File:
        raise OutputError(
            f"--out {location.uri} is a file; expected a directory (missing, empty, or the "
            "output of an earlier prepare)"
        )
    if kind == pafs.FileType.NotFound:
        try:
            location.fs.create_dir(location.path, recursive=True)
        except OSError as exc:
            raise write_error(location.uri, exc) from None
        return
    names = location.names()
    manifest = read_manifest(location)
    if names and manifest is None and OWNER_MARKER not in names and not overwrite:
        raise OutputError(
            f"--out {location.uri} is a non-empty directory that convplat did not write; "
            "choose another --out, or pass --overwrite to write shards into it (other files "
            "are left alone)"
        )


def mark_owned(location: Location) -> None:
    """Leave the marker that says this directory is a convplat shard set (idempotent)."""
    if not location.exists(OWNER_MARKER):
        body = {"tool": "convplat", "what": "prepare output: shards, manifest, index, stats"}
        location.write_bytes(OWNER_MARKER, (json.dumps(body) + "\n").encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def locked(location: Location) -> Iterator[None]:
    """Hold ``--out``'s lock file for the duration; refuse when a live run holds it.

    A lock left by a killed run on this host (its pid is gone) is taken over; one from
    another host is refused, with the file to remove if that run is known to be dead.
    """
    host = socket.gethostname()
    body = json.dumps({"pid": os.getpid(), "host": host, "started": time.time()}).encode()
    for attempt in range(2):
        if location.create_exclusive(LOCK, body):
            break
        try:
            holder = json.loads(location.read_bytes(LOCK))
            pid, other = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            pid, other = -1, "?"
        if attempt == 0 and other == host and pid > 0 and not _alive(pid):
            location.delete(LOCK)  # left by a killed run on this machine
            continue
        raise OutputError(
            f"another prepare (pid {pid} on {other}) is writing {location.uri}; wait for it, "
            f"or delete {location.uri.rstrip('/')}/{LOCK} if no prepare is running"
        )
    try:
        yield
    finally:
        try:
            if location.exists(LOCK) and location.read_bytes(LOCK) == body:
                location.delete(LOCK)
        except OSError:
            pass


def stale_shards(location: Location, planned: Iterable[str]) -> list[str]:
    """Shards of an earlier prepare that are not in the plan: a ``train|val|test-NNNNNN.tar``
    at the top level whose ``_parts/<shard>.json`` sidecar shows convplat wrote it (a foreign
    WebDataset shard of the same name, in a directory taken with ``overwrite``, is left alone)."""
    keep = set(planned)
    parts = set(location.names(PARTS_DIR))
    return [
        name
        for name in location.names()
        if SHARD_NAME.fullmatch(name) and name not in keep and f"{name}.json" in parts
    ]


def remove_stale_shards(location: Location, planned: Iterable[str]) -> list[str]:
    """Delete :func:`stale_shards` and every ``_parts/`` sidecar of a shard not in the plan.

    Only convplat's own names (``<shard>.json|.npz`` in ``_parts/``); returns what it deleted.
    """
    keep = set(planned)
    removed = [name for name in stale_shards(location, keep) if location.delete(name)]
    for name in location.names(PARTS_DIR):
        match = PART_NAME.fullmatch(name)
        if match and match.group(1) not in keep and location.delete(f"{PARTS_DIR}/{name}"):
            removed.append(f"{PARTS_DIR}/{name}")
    return removed
