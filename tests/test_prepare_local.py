"""Small prepare jobs run without Ray (in the driver, or a local process pool) and write the
same bytes as Ray's tasks."""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_imagenet_tree

from convplat.config import PrepareConfig
from convplat.pipeline import prepare

prepare_module = importlib.import_module("convplat.pipeline.prepare")


def tree_digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    make_imagenet_tree(root, classes=2, train_per_class=6, val_per_class=2)
    return root


def test_every_executor_writes_the_same_bytes(raw, tmp_path, ray_session, monkeypatch):
    def run(out: str, executor: str) -> dict:
        config = PrepareConfig(
            source=str(raw), out=str(tmp_path / out), size=16, shard_size=3, num_cpus=2,
            progress=False,
        )  # fmt: skip
        return prepare(config, executor=executor)["summary"]

    summary = run("ray", "ray")
    assert summary["executor"] == "ray" and summary["ray_nodes"] == 1  # the local Ray
    summary = run("inline", "auto")
    assert summary["executor"] == "inline" and summary["ray_nodes"] == 0  # tiny: no pool or Ray
    monkeypatch.setattr(prepare_module, "LOCAL_POOL_MIN_IMAGES", 0)
    assert run("pool", "local")["executor"] == "pool"
    reference = tree_digests(tmp_path / "ray")
    assert any(name.endswith(".tar") for name in reference)
    assert tree_digests(tmp_path / "inline") == reference
    assert tree_digests(tmp_path / "pool") == reference


def test_a_small_prepare_never_starts_ray(raw, tmp_path):
    script = (
        "import sys; from convplat.config import PrepareConfig; from convplat.pipeline import "
        f"prepare; s = prepare(PrepareConfig(source={str(raw)!r}, out={str(tmp_path / 'o')!r}, "
        "size=16, progress=False))['summary']; print(s['executor'], 'ray' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["inline", "False"]


def test_unknown_executor_is_one_line(raw, tmp_path):
    from convplat.errors import ConfigError

    with pytest.raises(ConfigError, match="--executor"):
        prepare(PrepareConfig(source=str(raw), out=str(tmp_path / "o")), executor="spark")


def test_summary_counts_from_when_the_user_started_waiting(raw, tmp_path):
    import time

    config = PrepareConfig(source=str(raw), out=str(tmp_path / "o"), size=16, progress=False)
    summary = prepare(config, started=time.perf_counter() - 100)["summary"]
    assert summary["seconds"] >= 100
    assert summary["images_per_s"] <= round(summary["images"] / 100, 1)
