"""WebDataset tar bytes for one shard, written without tarfile's per-member overhead.

`tarfile.addfile` (what webdataset's `TarWriter` calls) copies the TarInfo, builds a dict,
checks which fields need PAX records and formats every field, ~75 us per member; a shard task
writes three members per image, which cost ~10 % of its time (benchmarks/prepare.py). Here the
constant part of a member header is formatted once and each member only fills in its name and
size. The bytes are exactly those `webdataset.TarWriter(..., mtime=0)` writes (its tarfile uses
the PAX format, which for short ASCII names is a plain ustar header; tests/test_tar.py compares
the two); any name the fast header cannot hold exactly is handed to tarfile itself.
"""

from __future__ import annotations

import tarfile

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_NAME_FIELD = 100
_MAX_SIZE = 8**11 - 1  # the largest size the 12-byte octal field holds


class ShardTar:
    """An in-memory tar of WebDataset samples: each sample's members contiguous, sorted by
    extension (the order `webdataset.TarWriter` uses), owner ``user``/``group``, mtime 0."""

    def __init__(self, user: str = "convplat", group: str = "convplat", mode: int = 0o444) -> None:
        self._user, self._group, self._mode = user, group, mode
        self._parts: list[bytes] = []
        self._offset = 0
        probe = _header_via_tarfile("x", 0, user, group, mode)
        # Everything after the size field: mtime, checksum placeholder, type, names, devices.
        self._tail = probe[136:148] + b" " * 8 + probe[156:BLOCK]
        self._fast = user.isascii() and group.isascii() and len(user) < 32 and len(group) < 32
        self._mode_ids = probe[100:124]  # mode, uid, gid

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample: ``key.ext`` for every ``ext -> bytes`` in ``members``."""
        for ext in sorted(members):
            self._add(f"{key}.{ext}", members[ext])

    def _add(self, name: str, data: bytes) -> None:
        size = len(data)
        header = self._header(name, size)
        padding = -size % BLOCK
        self._parts.append(header)
        self._parts.append(data)
        if padding:
            self._parts.append(b"\0" * padding)
        self._offset += len(header) + size + padding

    def _header(self, name: str, size: int) -> bytes:
        if not (self._fast and name.isascii() and len(name) <= _NAME_FIELD and size <= _MAX_SIZE):
            return _header_via_tarfile(name, size, self._user, self._group, self._mode)
        head = name.encode("ascii").ljust(_NAME_FIELD, b"\0") + self._mode_ids + b"%011o\0" % size
        block = head + self._tail
        checksum = sum(block)
        return block[:148] + b"%06o\0 " % checksum + block[156:]

    def getvalue(self) -> bytes:
        """The finished archive: members, two zero blocks, zero-padded to a whole record."""
        end = self._offset + 2 * BLOCK
        return b"".join(self._parts) + b"\0" * (2 * BLOCK + (-end % RECORD))


def _header_via_tarfile(name: str, size: int, user: str, group: str, mode: int) -> bytes:
    """tarfile's own header (PAX records where needed), as webdataset's TarWriter writes it."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, mode
    info.uname, info.gname = user, group
    return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
