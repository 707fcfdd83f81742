"""Prepare across processes: a SIGKILLed run resumes byte-identically (the multi-node run is
test_cluster3.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_imagenet_tree

from convplat.config import PrepareConfig
from convplat.pipeline import prepare
from convplat.pipeline.outdir import PARTS_DIR

ARGS = ["--size", "32", "--shard-size", "2"]


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "convplat.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def test_killed_prepare_resumes_byte_identical(tmp_path, ray_session):
    root = tmp_path / "raw"
    # Many small shards (one Ray task each) so the kill reliably lands mid-run.
    make_imagenet_tree(root, classes=4, train_per_class=60, val_per_class=5, quirks=False)
    reference = tmp_path / "reference"
    prepare(
        PrepareConfig(source=str(root), out=str(reference), size=32, shard_size=2, progress=False)
    )
    expected = digests(reference)

    out = tmp_path / "killed"
    proc = cli(
        "prepare", str(root), "--out", str(out), "--num-cpus", "1", *ARGS, start_new_session=True
    )
    # Complete shards: a tar is renamed into place before its sidecars, so a kill between the
    # two leaves a tar that the resumed run rightly writes again.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((out / PARTS_DIR).glob("*.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = digests(out)
    assert 3 <= len(partial) < len(expected), "the kill must land mid-run"
    assert not (out / "manifest.json").exists()

    manifest = prepare(
        PrepareConfig(source=str(root), out=str(out), size=32, shard_size=2, progress=False)
    )
    assert digests(out) == expected
    assert manifest["summary"]["kept"] >= 3
    for name in ("manifest.json", "index.parquet", "stats.npz", "rejected.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
