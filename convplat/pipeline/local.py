"""Shard tasks without Ray, for jobs too small to repay a Ray start-up (issue 15 §6).

Starting Ray, its workers and shutting it down cost ~5-10 s on a laptop; a few hundred images
take less than that to prepare. The same pure `write_shard` runs here in the driver itself or
in a local process pool, so the output is byte-identical whichever runs it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from convplat.pipeline.shards import ShardInfo, ShardOptions, ShardSpec, write_shard

# Below this many images the driver prepares them itself: a pool's start-up (~1-1.5 s to
# import the image stack in its workers) costs more than a second core saves.
LOCAL_POOL_MIN_IMAGES = 500

Result = tuple[ShardSpec, tuple[ShardInfo, dict]]


def run_local(
    todo: list[ShardSpec], out: str, options: ShardOptions, workers: int
) -> Iterator[Result]:
    """Yield ``(spec, write_shard(spec, out, options))`` as shards finish, using ``workers``
    processes (1: in this process). At most two tasks per worker are queued, so results
    waiting to be taken stay few."""
    if workers <= 1 or len(todo) <= 1:
        for spec in todo:
            yield spec, write_shard(spec, out, options)
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
        for spec in source:
            pending[pool.submit(write_shard, spec, out, options)] = spec
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec = pending.pop(future)
                for more in source:
                    pending[pool.submit(write_shard, more, out, options)] = more
                    break
                yield spec, future.result()
