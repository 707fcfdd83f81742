"""Joining or starting Ray, quietly: one place decides how convplat talks to a cluster."""

from __future__ import annotations

import logging
import os

from convplat.errors import ResourceError


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


def cluster_cpus() -> int:
    """CPUs the connected Ray cluster offers."""
    import ray

    return int(ray.cluster_resources().get("CPU", 0))
