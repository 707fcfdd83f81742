"""The CLI's error boundary: which failures are the user's or the machine's (one line on
stderr, exit 2) and which are convplat's own bugs (the traceback stays).

One line: every ConvplatError; a full disk (ENOSPC, also when it surfaces from a Ray task or a
pyarrow write); Ray failing to start or to connect. Anything else is a bug and keeps its
traceback, so it can be reported and fixed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from convplat.errors import ConvplatError

_RAY_START = (
    os.path.join("ray", "_private", "worker.py"),
    os.path.join("ray", "_private", "node.py"),
    os.path.join("ray", "_private", "services.py"),
)
_RAY_START_FUNCTIONS = {"init", "connect", "__init__", "start_head_processes", "wait_for_node"}


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: ``__cause__``/``__context__`` and a Ray task error's cause."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]


def _disk_full(exc: BaseException) -> str | None:
    for cause in _causes(exc):
        if isinstance(cause, OSError) and (
            cause.errno == errno.ENOSPC or "No space left on device" in str(cause)
        ):
            where = f" writing {cause.filename}" if cause.filename else ""
            return f"disk full{where}: no space left on device (free space, then re-run)"
    return None


def _ray_start_failure(exc: BaseException) -> str | None:
    """A failure raised while ``ray.init`` starts or joins a cluster (a timeout, a refused
    connection, Ray's own "timed out during startup"), not one of convplat's bugs there."""
    if not isinstance(exc, ConnectionError | TimeoutError) and type(exc) not in (
        Exception,
        RuntimeError,
    ):
        return None
    traceback = exc.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if code.co_filename.endswith(_RAY_START) and code.co_name in _RAY_START_FUNCTIONS:
            text = " ".join(str(exc).split()) or type(exc).__name__
            return (
                f"Ray did not start or could not be joined: {text} "
                "(check --address / RAY_ADDRESS; Ray's logs are in /tmp/ray/session_latest/logs)"
            )
        traceback = traceback.tb_next
    return None


def _convplat_error(exc: BaseException) -> ConvplatError | None:
    """The ConvplatError ``exc`` is, or that a Ray task raised (Ray wraps it in a RayTaskError
    whose text is the worker's whole traceback; ``cause`` is the original)."""
    found = None
    current: object = exc
    for _ in range(8):
        if isinstance(current, ConvplatError):
            found = current
        current = getattr(current, "cause", None)
        if not isinstance(current, BaseException):
            break
    return found


def user_facing(exc: BaseException) -> str | None:
    """The one line to print for ``exc``, or None when it is a bug (keep the traceback)."""
    error = _convplat_error(exc)
    if error is not None:
        return str(error).replace("\n", " ")
    return _disk_full(exc) or _ray_start_failure(exc)
