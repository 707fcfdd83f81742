"""Reused shared-memory batch buffers for loader processes.

A loader process that puts every uint8 batch into a fresh shared-memory segment pays each time
for creating, zero-filling and mapping it (about 110 µs an image at 224x224 on this machine);
writing into a segment it already owns does not. A segment may be written again only once the
main process holds no batch that lives in it, and only the main process can tell: every batch
travels with the slot it was written into, and on receiving one, the main process marks free the
slots whose earlier batches nobody references any more (``StorageWeakRef``, the weak reference
torch's own tensor-sharing cache uses). A consumer that keeps its batches keeps their slots
taken; the loader process then makes a fresh segment, as it would without slots.

Main process: :class:`SlotTable` (before the loader processes start, so they share its flags).
Loader process: :class:`WorkerSlots` lends buffers while ``lending()`` is active, which
:func:`convplat.training.data.new_uint8_batch` asks through :func:`lending_pool`.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef

# Two batches prefetched per loader process, one the consumer is using and one it has just
# dropped (released at the next receipt): four slots keep a steady-state loop on reused buffers.
SLOTS_PER_WORKER = 4

_ids = itertools.count()
_TABLES: weakref.WeakValueDictionary[int, SlotTable] = weakref.WeakValueDictionary()
# Main process: slots whose batch was received and may still be referenced.
_OUTSTANDING: list[tuple[int, int, int, StorageWeakRef]] = []
_LENDING: WorkerSlots | None = None  # loader process: the pool of the collate running now


class SlotTable:
    """The free flags of every loader process's buffers, in shared memory.

    ``free[w, s] == 1``: loader process ``w`` may write its buffer ``s``. ``counts[w]`` counts
    its batches written into one of its slots' buffers and into a fresh segment.
    """

    def __init__(self, workers: int, slots: int = SLOTS_PER_WORKER) -> None:
        self.id = next(_ids)
        self.free = torch.ones((workers, slots), dtype=torch.uint8).share_memory_()
        self.counts = torch.zeros((workers, 2), dtype=torch.int64).share_memory_()
        _TABLES[self.id] = self

    def usage(self) -> dict[str, int]:
        """Batches written into slot buffers and into fresh segments so far, all workers (a
        slot's first batch creates its buffer; every later one reuses it)."""
        slots, fresh = self.counts.sum(dim=0).tolist()
        return {"slots": int(slots), "fresh": int(fresh)}


class Leased:
    """A batch on its way to the main process with the slot its images were written into;
    unpickled (in the main process) as the plain batch, its slot registered there."""

    __slots__ = ("batch", "table", "worker", "slot", "buffer")

    def __init__(self, batch: Any, table: int, worker: int, slot: int, buffer: torch.Tensor):
        self.batch, self.table, self.worker, self.slot = batch, table, worker, slot
        self.buffer = buffer

    def __reduce__(self):
        return _received, (self.batch, self.table, self.worker, self.slot, self.buffer)


def release_expired() -> None:
    """Mark free every received slot whose storage no tensor in this process references."""
    keep = []
    for item in _OUTSTANDING:
        table_id, worker, slot, ref = item
        if not ref.expired():
            keep.append(item)
        elif (table := _TABLES.get(table_id)) is not None:
            table.free[worker, slot] = 1
    _OUTSTANDING[:] = keep


def _received(batch: Any, table: int, worker: int, slot: int, buffer: torch.Tensor) -> Any:
    if table in _TABLES:
        release_expired()
        _OUTSTANDING.append((table, worker, slot, StorageWeakRef(buffer.untyped_storage())))
    return batch


class WorkerSlots:
    """One loader process's buffers; lends at most one per collate (the batch's images)."""

    def __init__(self, table: SlotTable, worker: int) -> None:
        self.table, self.worker = table, worker
        self.free = table.free[worker].numpy()  # a view of the shared flags
        self.counts = table.counts[worker].numpy()
        self.buffers: list[torch.Tensor | None] = [None] * len(self.free)
        self.lease: tuple[int, torch.Tensor] | None = None

    @contextmanager
    def lending(self) -> Iterator[None]:
        global _LENDING
        self.lease, _LENDING = None, self
        try:
            yield
        finally:
            _LENDING = None

    def new(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised shared-memory uint8 tensor of ``shape``: a free slot's buffer, or a
        fresh segment when none is free (or this collate already holds one)."""
        numel = math.prod(shape)
        # A private copy: the main process sets flags in the shared row while we look, and
        # np.nonzero on a changing array raises ("number of non-zero array elements changed").
        # A stale copy is safe: only this process clears its flags, so a slot it sees free is.
        free = np.flatnonzero(self.free.copy()) if self.lease is None else ()
        if len(free) == 0:
            self.counts[1] += 1
            return torch.empty(shape, dtype=torch.uint8).share_memory_()
        slot = int(free[0])
        buffer = self.buffers[slot]
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[slot] = torch.empty(numel, dtype=torch.uint8).share_memory_()
        self.free[slot] = 0
        self.counts[0] += 1
        images = buffer[:numel].view(shape)
        self.lease = (slot, images)
        return images

    def wrap(self, batch: Any) -> Any:
        """``batch`` as it should be sent: :class:`Leased` when it took a slot."""
        if self.lease is None:
            return batch
        slot, images = self.lease
        self.lease = None
        return Leased(batch, self.table.id, self.worker, slot, images)


def lending_pool() -> WorkerSlots | None:
    """The loader process's pool while a batch is being collated, else None."""
    return _LENDING
