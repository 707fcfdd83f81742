"""The shard plan of a ``prepare`` run, kept on disk: which items go in which shard.

:func:`~convplat.pipeline.shards.plan_shards` defines the plan (each split's items in listing
order, put in a seeded random order, cut into shards); :class:`ShardPlan` builds the same
shards from a stream of items without a Python object per item in memory. A split's items go
to a temporary file (its byte offsets, 8 bytes an item, stay in memory while it is planned,
beside numpy's permutation, 8 more), each shard's spec is written to a second file, and the
driver keeps one :class:`PlannedShard` per shard; a task's spec is read back when it is
handed out. Temporary disk: ~250 bytes an item of the largest split, ~90 bytes an item in all,
in files unlinked when made (``tempfile.TemporaryFile``), so even a killed run leaves none.
"""

from __future__ import annotations

import marshal
import os
import tempfile
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from convplat.pipeline.readers import Item
from convplat.pipeline.shards import (
    ShardOptions,
    ShardSpec,
    plan_digest,
    plan_fingerprint,
    shuffle_order,
)


@dataclass(frozen=True)
class PlannedShard:
    """One shard of the plan: what the driver keeps instead of its items."""

    split: str
    index: int
    count: int
    digest: str  # plan_digest of its spec
    offset: int  # where its pickled spec starts in the plan's spec file
    length: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}.tar"


class ShardPlan:
    """Every shard of the plan (``shards``, in plan order) and their specs on disk (``spec``).

    Build it with :meth:`build`; close it (or use it as a context manager) to remove its files.
    """

    def __init__(self) -> None:
        self.shards: list[PlannedShard] = []
        self._specs: BinaryIO = tempfile.TemporaryFile(prefix="convplat-plan-", buffering=0)

    @classmethod
    def build(
        cls, items: Iterable[Item], shard_size: int, seed: int, options: ShardOptions
    ) -> ShardPlan:
        """The plan of ``plan_shards(list(items), shard_size, seed)`` and each shard's
        ``plan_digest``. ``items`` must come sorted by split (a listing's order)."""
        plan = cls()
        try:
            with tempfile.TemporaryFile(prefix="convplat-plan-items-") as store:
                split: str | None = None
                ends = array("q", [0])
                for item in items:
                    if item.split != split:
                        if split is not None:
                            if item.split < split:
                                raise ValueError("items must come sorted by split")
                            plan._add_split(split, store, ends, shard_size, seed, options)
                        split, ends = item.split, array("q", [0])
                        store.seek(0)
                        store.truncate()
                    ends.append(ends[-1] + store.write(marshal.dumps(_item_tuple(item))))
                if split is not None:
                    plan._add_split(split, store, ends, shard_size, seed, options)
        except BaseException:
            plan.close()
            raise
        return plan

    def _add_split(
        self,
        split: str,
        store: BinaryIO,
        ends: array,
        shard_size: int,
        seed: int,
        options: ShardOptions,
    ) -> None:
        """Cut one split's stored items into shards in the seeded order; save their specs."""
        store.flush()
        fd = store.fileno()
        bounds = np.frombuffer(ends, dtype=np.int64)
        order = shuffle_order(split, len(bounds) - 1, seed)
        for index, start in enumerate(range(0, len(order), shard_size)):
            positions = order[start : start + shard_size].tolist()
            rows = tuple(
                marshal.loads(os.pread(fd, int(bounds[p + 1] - bounds[p]), int(bounds[p])))
                for p in positions
            )
            spec = ShardSpec(split, index, tuple(Item(*row) for row in rows))
            data = marshal.dumps(rows)
            offset = self._specs.seek(0, os.SEEK_END)
            self._specs.write(data)
            digest = plan_digest(spec, options)
            self.shards.append(PlannedShard(split, index, len(rows), digest, offset, len(data)))
        del bounds  # release the view of ``ends``

    def spec(self, shard: PlannedShard) -> ShardSpec:
        """The shard's spec (its items), read back from disk."""
        rows = marshal.loads(os.pread(self._specs.fileno(), shard.length, shard.offset))
        return ShardSpec(shard.split, shard.index, tuple(Item(*row) for row in rows))

    @property
    def digests(self) -> dict[str, str]:
        return {shard.name: shard.digest for shard in self.shards}

    def fingerprint(self) -> str:
        """The plan's fingerprint for the manifest (``shards.plan_fingerprint``)."""
        return plan_fingerprint(self.shards, self.digests)

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for shard in self.shards:
            counts[shard.split] = counts.get(shard.split, 0) + shard.count
        return counts

    def close(self) -> None:
        self._specs.close()

    def __enter__(self) -> ShardPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _item_tuple(item: Item) -> tuple:
    """An item as plain values for ``marshal`` (fast, and exact for str, int, float tuples)."""
    return (item.path, item.split, item.label, item.key, item.boxes, item.box_labels)
