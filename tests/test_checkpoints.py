"""Picking the run that `evaluate` and `transfer` use when none is named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from convplat.errors import ConvplatError
from convplat.training.checkpoints import FINAL_WEIGHTS, newest_run


def _run(root: Path, name: str, mtime: float, **config) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "alexnet", **config}))
    weights = run / FINAL_WEIGHTS
    weights.write_bytes(b"x")
    os.utime(weights, (mtime, mtime))
    return run


def test_newest_run_skips_detection_runs(tmp_path: Path) -> None:
    old = _run(tmp_path, "alexnet-1", 1_000)
    _run(tmp_path, "detect-alexnet-2", 3_000, task="detect")
    assert newest_run(str(tmp_path)) == str(old)
    newer = _run(tmp_path, "zfnet-3", 2_000)
    assert newest_run(str(tmp_path)) == str(newer)


def test_newest_run_without_classifier_runs_is_a_user_error(tmp_path: Path) -> None:
    _run(tmp_path, "detect-alexnet-2", 3_000, task="detect")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "broken" / FINAL_WEIGHTS).write_bytes(b"x")
    with pytest.raises(ConvplatError, match="no trained run"):
        newest_run(str(tmp_path))


def test_damaged_or_foreign_weights_are_one_line():
    from torch import nn

    from convplat.errors import ConvplatError
    from convplat.training.checkpoints import load_weights, state_dict_bytes

    data = state_dict_bytes(nn.Linear(4, 3))
    with pytest.raises(ConvplatError, match="run/model.safetensors: not a safetensors file"):
        load_weights(nn.Linear(4, 3), data[:40], "run/model.safetensors")
    with pytest.raises(ConvplatError, match="weights do not fit Linear"):
        load_weights(nn.Linear(5, 3), data, "run/model.safetensors")
