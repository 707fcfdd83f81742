"""Listed files in sorted order without holding them all: an external merge sort.

A reader appends one :data:`Record` per file; every ``run_size`` records the buffer is sorted
and written to a temporary file, and :meth:`RecordSink.sorted` merges the runs back into one
stream, the same order ``sorted(records)`` gives. So listing ImageNet-22k (14 M files) keeps
at most ``run_size`` records in memory (issue 15 §2: "never hold a list of all items in memory
that the readers could stream"); the runs cost ~150 bytes a file of temporary disk, in files
that are unlinked when made (``tempfile.TemporaryFile``), so even a killed run leaves none.
"""

from __future__ import annotations

import heapq
import os
import pickle
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import BinaryIO

from convplat.pipeline.readers.items import Record

# Records per sorted run (~300 bytes each in memory). None: never spill.
RUN_RECORDS = 16384
_CHUNK = 1024  # records per pickle in a run file


class RecordSink:
    """Collects records (``append``), then gives them back sorted (``sorted``), any number of
    times; ``close`` removes the run files. ``run_size=None`` keeps everything in memory."""

    def __init__(self, run_size: int | None = RUN_RECORDS) -> None:
        if run_size is not None and run_size < 1:
            raise ValueError(f"expected run_size >= 1 or None, got {run_size}")
        self.run_size = run_size
        self.counts: Counter[str] = Counter()  # records per split
        self._buffer: list[Record] = []
        self._runs: list[_Run] = []
        self._sorted = True

    def append(self, record: Record) -> None:
        self._buffer.append(record)
        self.counts[record[0]] += 1
        self._sorted = False
        if self.run_size is not None and len(self._buffer) >= self.run_size:
            self._spill()

    def __len__(self) -> int:
        return sum(self.counts.values())

    def sorted(self) -> Iterator[Record]:
        """Every record, in ``sorted()`` order (records are distinct: one per path)."""
        if not self._sorted:
            self._buffer.sort()
            self._sorted = True
        if not self._runs:
            return iter(self._buffer)
        return heapq.merge(*(run.read() for run in self._runs), iter(self._buffer))

    def unordered(self) -> Iterator[Record]:
        """Every record, in no particular order (cheaper than :meth:`sorted`)."""
        for run in self._runs:
            yield from run.read()
        yield from self._buffer

    def close(self) -> None:
        """Drop the run files and the records kept in memory."""
        for run in self._runs:
            run.file.close()
        self._runs, self._buffer = [], []

    def _spill(self) -> None:
        self._buffer.sort()
        run = _Run(tempfile.TemporaryFile(prefix="convplat-listing-", buffering=0), [])
        for start in range(0, len(self._buffer), _CHUNK):
            data = pickle.dumps(self._buffer[start : start + _CHUNK], pickle.HIGHEST_PROTOCOL)
            run.chunks.append((run.file.seek(0, os.SEEK_END), len(data)))
            run.file.write(data)
        self._runs.append(run)
        self._buffer = []
        self._sorted = True


class _Run:
    """One sorted run: an unlinked temporary file and where its pickled chunks are."""

    def __init__(self, file: BinaryIO, chunks: list[tuple[int, int]]) -> None:
        self.file, self.chunks = file, chunks

    def read(self) -> Iterator[Record]:
        # pread: any number of readers, each with its own position
        for offset, length in self.chunks:
            yield from pickle.loads(os.pread(self.file.fileno(), length, offset))
