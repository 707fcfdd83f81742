"""Listed files in sorted order without holding them all: an external merge sort.

A reader appends one :data:`Record` per file; every ``run_size`` records the buffer is sorted
and written to a temporary file, and :meth:`RecordSink.sorted` merges the runs back into one
stream, the same order ``sorted(records)`` gives. So listing ImageNet-22k (14 M files) keeps
at most ``run_size`` records in memory (issue 15 §2: "never hold a list of all items in memory
that the readers could stream"); the runs cost ~150 bytes a file of temporary disk.
"""

from __future__ import annotations

import heapq
import os
import pickle
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator

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
        self._runs: list[str] = []
        self._dir: str | None = None
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
        return heapq.merge(*(_read_run(path) for path in self._runs), iter(self._buffer))

    def unordered(self) -> Iterator[Record]:
        """Every record, in no particular order (cheaper than :meth:`sorted`)."""
        for path in self._runs:
            yield from _read_run(path)
        yield from self._buffer

    def close(self) -> None:
        """Remove the run files and the records kept in memory."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir, self._runs, self._buffer = None, [], []

    def _spill(self) -> None:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="convplat-listing-")
        self._buffer.sort()
        path = os.path.join(self._dir, f"run-{len(self._runs):06d}.pkl")
        with open(path, "wb") as f:
            for start in range(0, len(self._buffer), _CHUNK):
                pickle.dump(self._buffer[start : start + _CHUNK], f, pickle.HIGHEST_PROTOCOL)
        self._runs.append(path)
        self._buffer = []
        self._sorted = True


def _read_run(path: str) -> Iterator[Record]:
    with open(path, "rb") as f:
        while True:
            try:
                chunk = pickle.load(f)
            except EOFError:
                return
            yield from chunk
