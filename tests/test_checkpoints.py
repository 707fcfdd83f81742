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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": 5}, "model: expected a string, got 5"),  # was an AttributeError traceback
        ({"num_classes": "x"}, "num_classes: expected an integer, got 'x'"),
        ({"num_classes": 0}, "num_classes: expected >= 1"),
        ({"data": ["a"]}, "data: expected a string"),
        ({"model": None, "num_classes": None}, "lacks model, num_classes: not a training run"),
    ],
)
def test_run_config_with_damaged_values_is_one_line(tmp_path: Path, changes, message) -> None:
    from convplat.errors import ConfigError
    from convplat.training.checkpoints import load_run_model

    config = {"model": "alexnet", "num_classes": 3, "data": "shards"} | changes
    (tmp_path / "config.json").write_text(
        json.dumps({k: v for k, v in config.items() if v is not None})
    )
    with pytest.raises(ConfigError, match=message):
        load_run_model(str(tmp_path))


def test_damaged_or_foreign_weights_are_one_line():
    from torch import nn

    from convplat.errors import ConvplatError
    from convplat.training.checkpoints import load_weights, state_dict_bytes

    data = state_dict_bytes(nn.Linear(4, 3))
    with pytest.raises(ConvplatError, match="run/model.safetensors: not a safetensors file"):
        load_weights(nn.Linear(4, 3), data[:40], "run/model.safetensors")
    with pytest.raises(ConvplatError, match="weights do not fit Linear"):
        load_weights(nn.Linear(5, 3), data, "run/model.safetensors")


def test_build_model_takes_every_value_from_the_weights(monkeypatch):
    """build_model skips the random initialisation (meta device) yet gives the same network
    as init + load; weights of another architecture stay one ConvplatError line."""
    import torch

    from convplat.training.checkpoints import load_weights, state_dict_bytes
    from convplat.training.models.pretrained import build_network
    from convplat.transfer.checkpoint import build_model

    torch.manual_seed(0)
    reference = build_network("zfnet", num_classes=7).eval()
    data = state_dict_bytes(reference)
    calls = []
    real = torch.nn.init.normal_
    monkeypatch.setattr(
        torch.nn.init, "normal_", lambda t, *a, **k: calls.append(t) or real(t, *a, **k)
    )
    built = build_model("zfnet", 7, data)
    assert not calls  # no values drawn only to be overwritten (nor meta ones)
    assert not any(p.is_meta for p in built.parameters()) and not built.training
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(built(x), reference(x))
        assert torch.equal(built(x), load_weights(build_network("zfnet", 7), data).eval()(x))
    with pytest.raises(ConvplatError, match="weights do not fit"):
        build_model("alexnet", 7, data)


def test_latest_checkpoint_falls_back_to_the_newest_complete_epoch(tmp_path: Path) -> None:
    from convplat.training.checkpoints import latest_checkpoint

    checkpoints = tmp_path / "checkpoints"
    for epoch in (1, 2, 3):
        folder = checkpoints / f"epoch-{epoch:03d}"
        folder.mkdir(parents=True)
        (folder / FINAL_WEIGHTS).write_bytes(b"weights")
        (folder / "meta.json").write_text("{}")
    (checkpoints / "epoch-003" / "meta.json").unlink()  # a copy cut short: not complete
    (checkpoints / "latest").write_text("epoch-002\n")
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoints/epoch-002")
    (checkpoints / "epoch-002" / FINAL_WEIGHTS).unlink()  # latest names an emptied folder
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoints/epoch-001")  # before: None
    (checkpoints / "latest").write_bytes(b"\xff\x00../../x")  # a damaged marker
    assert latest_checkpoint(str(tmp_path)).endswith("checkpoints/epoch-001")
    (checkpoints / "epoch-001" / "meta.json").unlink()
    assert latest_checkpoint(str(tmp_path)) is None
