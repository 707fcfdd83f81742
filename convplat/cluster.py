"""Joining or starting Ray, quietly, and fanning work out over it: one place decides how
convplat talks to a cluster and when a job is big enough to be worth it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

# RAY_MIN_IMAGES: below this many images a job runs without Ray (starting Ray, ~3-6 s here,
# costs more than it saves); the one default of every ``--ray-min-images``.
from convplat.config.prepare import RAY_MIN_IMAGES
from convplat.errors import ConvplatError, ResourceError

__all__ = ["RAY_MIN_IMAGES", "cluster_size", "ensure_ray", "fan_out", "use_ray"]

K = TypeVar("K")


def ensure_ray(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), or start a local instance if none is running.

    Ray's INFO logs and worker log forwarding are turned off: users see convplat's own
    progress bar and summary, not the cluster's chatter (FIELD-NOTES: quiet Ray for users).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    if address is None:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ResourceError(f"cannot join the Ray cluster at {address!r}: {exc}") from None


def use_ray(executor: str, count: int, address: str | None, min_images: int) -> bool:
    """The one rule: ``ray`` always, ``local`` never, ``auto`` from ``min_images`` items
    (inclusive) or whenever a cluster address is given (or RAY_ADDRESS is set)."""
    if executor == "ray":
        return True
    if executor == "local":
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    return address is not None or count >= min_images


def cluster_size() -> tuple[int, int]:
    """(CPUs, GPUs) the connected cluster offers, at least one CPU."""
    import ray

    resources = ray.cluster_resources()
    return max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))


def fan_out(
    fn: Callable[..., Any],
    jobs: Iterable[tuple[K, tuple, dict]],
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int = 2,
    max_in_flight: int | None = None,
    nodes: set[str] | None = None,
) -> Iterator[tuple[K, Any]]:
    """Run ``fn(*args, **kwargs)`` as one Ray task per ``(key, args, kwargs)`` job and yield
    ``(key, result)`` in completion order.

    Jobs are submitted lazily, at most ``max_in_flight`` at a time (default: all), and each
    result's object reference is dropped as soon as it is yielded, so neither the driver nor
    the object store holds more than the tasks in flight. ``nodes``, when given, collects the
    ids of the Ray nodes the tasks ran on (so a command can say it really used the cluster).
    """
    import ray

    name = getattr(fn, "__name__", "task")  # the task's name in Ray, not the wrapper's
    task = ray.remote(_on_node).options(
        name=name, num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries
    )
    source = iter(jobs)
    pending: dict[Any, K] = {}

    def submit() -> bool:
        for key, args, kwargs in source:
            pending[task.remote(fn, *args, **kwargs)] = key
            return True
        return False

    while (max_in_flight is None or len(pending) < max_in_flight) and submit():
        pass
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        key = pending.pop(ref)
        try:
            node, result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # A user mistake inside a task (a damaged shard, a full disk): its own one line,
            # not Ray's wrapper with the worker's traceback.
            if isinstance(exc.cause, ConvplatError):
                raise exc.cause from None
            raise
        del ref, ready
        if nodes is not None:
            nodes.add(node)
        submit()
        yield key, result


def _on_node(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """The id of the Ray node running this task, and ``fn``'s result (``args`` stay top-level
    task arguments, so Ray still resolves any ObjectRef among them)."""
    import ray

    return ray.get_runtime_context().get_node_id(), fn(*args, **kwargs)
