"""`convplat train alexnet --parallel columns`: AlexNet §3.2 through Ray Train on 2 CPU workers."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import pytest
from conftest import make_imagenet_tree
from safetensors.torch import load_file
from test_train import _kill_rank_after

from convplat.cli.main import main
from convplat.config import PrepareConfig, TrainConfig
from convplat.errors import ConfigError
from convplat.pipeline import prepare
from convplat.training import evaluate, fit
from convplat.training.models import create_model
from convplat.training.trainer import resume_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("raw")
    make_imagenet_tree(root, classes=3, train_per_class=4, val_per_class=2, quirks=False)
    out = tmp_path_factory.mktemp("shards")
    prepare(PrepareConfig(source=str(root), out=str(out), size=256, shard_size=4, progress=False))
    return str(out)


def columns_config(shards: str, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        model="alexnet",
        data=shards,
        out=str(out),
        run_name="cols",
        epochs=1,
        batch_size=4,
        workers=2,
        parallel="columns",
        optimizer="adam",
        lr=1e-4,
        schedule="constant",
        limit_train_batches=2,
        limit_val_batches=1,
        loader_workers=0,
        progress=False,
        max_failures=0,
        report=False,
    )
    return dataclasses.replace(base, **changes)


def test_column_run_survives_a_killed_worker_writes_an_ordinary_alexnet_and_resumes(
    shards, tmp_path
):
    run = tmp_path / "cols"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_rank_after, args=(run, "epoch-001", 1, killed))
    watcher.start()
    fit(columns_config(shards, tmp_path, epochs=2, max_failures=1, keep_checkpoints=1))
    watcher.join()
    assert killed, "no Ray Train worker was killed"
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resume" and e["from_epoch"] >= 1 for e in events)
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and killed[0] not in starts[1]["pids"]  # a new worker group
    state = load_file(run / "model.safetensors")
    create_model("alexnet", num_classes=3).load_state_dict(state)  # the whole two-column net
    assert state["features.8.weight"].shape == (384, 256, 3, 3)
    start = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()][0]
    assert start["parallel"] == "columns" and start["world_size"] == 2
    result = evaluate(str(run), progress=False)  # evaluate reads it unchanged
    assert result["count"] == 6
    confusion = json.loads((run / "confusion-val.json").read_text())["counts"]
    assert len(confusion) == 3 and sum(map(sum, confusion)) >= 1

    fit(resume_config(str(run), {"epochs": 3}), resume=str(run))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    assert "resume" in events


def test_columns_need_the_two_column_alexnet_and_pairs():
    with pytest.raises(ConfigError, match="two-column alexnet"):
        TrainConfig(model="zfnet", workers=2, parallel="columns")
    with pytest.raises(ConfigError, match="even number of workers"):
        TrainConfig(model="alexnet", workers=3, batch_size=6, parallel="columns")
    assert main(["train", "alexnet", "--parallel", "rows", "--workers", "2"]) == 2
