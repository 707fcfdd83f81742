"""A simulated 3-node cluster (``ray.cluster_utils.Cluster``, issue 15 §4): `prepare --address`
writes the same bytes as a one-node run while its tasks use several nodes, and `features
--address` writes every part where the driver reads it, equal to an in-process extraction.

The CLI runs with relative paths from a working directory the cluster's nodes do not share, so
a path handed to the tasks unresolved would land somewhere else.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_imagenet_tree

from convplat.config import PrepareConfig
from convplat.export import extract, read_features
from convplat.pipeline import prepare
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.models import create_model

MiB = 1024 * 1024
OUTPUTS = ("manifest.json", "index.parquet", "stats.npz", "rejected.jsonl")


@pytest.fixture
def cluster(monkeypatch):
    """Head + 2 nodes, 1 CPU each. Ray's session and address file go to a private, short
    RAY_TMPDIR: Cluster writes ``ray_current_cluster``, which a plain ``ray.init()`` elsewhere
    on this machine would otherwise join (and Unix socket paths must stay short)."""
    from ray.cluster_utils import Cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tmp = tempfile.mkdtemp(prefix="cp3-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    # 400 MiB object stores (allocated as used): features puts AlexNet's 244 MB weights once.
    node = {"num_cpus": 1, "object_store_memory": 400 * MiB}
    nodes = Cluster(initialize_head=True, head_node_args=node)
    try:
        nodes.add_node(**node)
        nodes.add_node(**node)
        nodes.wait_for_nodes()
        yield nodes
    finally:
        nodes.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def cli(cwd: Path, *args: str) -> str:
    """Run the real CLI from ``cwd``; its stdout (the test fails with stderr on an error)."""
    proc = subprocess.run(
        [sys.executable, "-m", "convplat.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def nodes_used(pattern: str, stdout: str) -> int:
    match = re.search(pattern, stdout)
    assert match, stdout
    return int(match.group(1))


def test_three_nodes_prepare_byte_identical_and_features(tmp_path: Path, cluster):
    make_imagenet_tree(tmp_path / "raw", classes=3, train_per_class=8, val_per_class=3)
    one = tmp_path / "one"  # the single-node run (this process, no Ray)
    prepare(PrepareConfig(source=str(tmp_path / "raw"), out=str(one), shard_size=4, progress=False))

    address = cluster.address
    stdout = cli(tmp_path, "prepare", "raw", "--out", "three", "--shard-size", "4",
                 "--address", address)  # fmt: skip
    three = tmp_path / "three"
    assert len(digests(one)) >= 6 and digests(three) == digests(one)
    for name in OUTPUTS:
        assert (three / name).read_bytes() == (one / name).read_bytes(), name
    assert nodes_used(r"shard tasks ran on (\d+) Ray node", stdout) >= 2

    # A hand-made run trained on those shards: its config and weights are all features needs.
    torch.manual_seed(0)
    run = tmp_path / "runs" / "alexnet-test"
    run.mkdir(parents=True)
    config = {"model": "alexnet", "num_classes": 3, "data": str(one), "input_scale": 1 / 64}
    (run / "config.json").write_text(json.dumps(config))
    (run / "model.safetensors").write_bytes(state_dict_bytes(create_model("alexnet", 3)))
    stdout = cli(tmp_path, "features", "runs/alexnet-test", "three", "--layer", "fc6",
                 "--out", "fc6", "--address", address)  # fmt: skip
    assert nodes_used(r"\(ray on (\d+) node", stdout) >= 2
    got = read_features(str(tmp_path / "fc6"))
    extract(str(run), str(one), layer="fc6", out=str(tmp_path / "local"), executor="local",
            progress=False)  # fmt: skip
    want = read_features(str(tmp_path / "local"))
    manifest = json.loads((one / "manifest.json").read_text())
    images = sum(split["count"] for split in manifest["splits"].values())
    assert got["keys"] == want["keys"] and len(got["keys"]) == images
    assert np.array_equal(got["labels"], want["labels"])
    np.testing.assert_allclose(got["vectors"], want["vectors"], rtol=1e-4, atol=1e-5)
