"""Shard tasks without Ray, for jobs too small to repay a Ray start-up (issue 15 §6).

Starting Ray, its workers and shutting it down cost ~5-10 s on a laptop; a few hundred images
take less than that to prepare. The same pure `write_shard` runs here in the driver itself or
in a local process pool, so the output is byte-identical whichever runs it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import TypeVar

from convplat.pipeline.shards import ShardInfo, ShardOptions, ShardSpec, write_shard

# Below this many images the driver prepares them itself: a pool's start-up (~1-1.5 s to
# import the image stack in its workers) costs more than a second core saves.
LOCAL_POOL_MIN_IMAGES = 500

K = TypeVar("K")


def run_local(
    todo: Iterable[tuple[K, ShardSpec]], out: str, options: ShardOptions, workers: int
) -> Iterator[tuple[K, tuple[ShardInfo, dict]]]:
    """Yield ``(key, write_shard(spec, out, options))`` for each ``(key, spec)`` of ``todo``
    as shards finish, using ``workers`` processes (1: in this process). ``todo`` is taken
    lazily and at most two tasks per worker are queued, so neither specs nor results waiting
    to be taken pile up."""
    if workers <= 1:
        for key, spec in todo:
            yield key, write_shard(spec, out, options)
        return
    # forkserver: workers are forked from a clean server that imported the shard writer once,
    # never from this process (whose torch or Ray threads a fork would copy in a broken state).
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["convplat.pipeline.shards"])
    source = iter(todo)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending = {}
        for key, spec in source:
            pending[pool.submit(write_shard, spec, out, options)] = key
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                for more_key, more in source:
                    pending[pool.submit(write_shard, more, out, options)] = more_key
                    break
                yield key, future.result()
