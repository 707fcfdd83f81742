"""`convplat verify SHARDS`: re-hash every shard against manifest.json (exit 2 if any differs)."""

from __future__ import annotations

from typing import Annotated

import typer


def verify_command(
    shards: Annotated[
        str, typer.Argument(help="Shard directory written by `convplat prepare` (path or URI).")
    ] = "shards/imagenet",
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal.")] = True,
) -> None:
    """Check every shard's size and sha256 against manifest.json, and that stats.npz loads.

    The loaders check sizes and sample counts on every read; this is the full check, for
    shards copied between machines or kept on storage for a long time.
    """
    from convplat.errors import DatasetError
    from convplat.pipeline.shardset import verify

    report = verify(shards, progress=progress)
    if not report.ok:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise DatasetError(f"{report.problems[0]}{more}; re-run `convplat prepare` to repair")
    print(f"{report.shards} shards, {report.bytes / 1e6:.1f} MB: all match {report.uri}")
