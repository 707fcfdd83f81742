"""The Ray Train worker kit: run directories are never taken over, URIs keep their scheme,
flags that cannot be honoured are refused, and a failed run leaves its traceback in error.log."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from convplat.config import TrainConfig
from convplat.errors import ConfigError, ConvplatError
from convplat.localize.localize import OUT_DIR, WEIGHTS, clear_outputs, output_dir
from convplat.storage import resolve
from convplat.training.checkpoints import load_run_model
from convplat.training.raytrain import (
    TrainingError,
    Worker,
    build_optimizer,
    check_finite,
    check_scaling,
    new_run_dir,
    root_cause,
    run_name,
    run_trainer,
)
from convplat.training.trainer import resume_config


def test_a_given_run_name_that_exists_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    with pytest.raises(ConvplatError, match=r"tiny exists; use --resume .*tiny to continue it"):
        new_run_dir(str(tmp_path), "tiny")
    assert (tmp_path / "tiny" / "config.json").read_text() == "{}"


def test_a_generated_name_that_exists_gets_a_suffix(tmp_path: Path) -> None:
    names = [run_name(new_run_dir(str(tmp_path), "alexnet-stamp", given=False)) for _ in range(3)]
    assert names == ["alexnet-stamp", "alexnet-stamp-2", "alexnet-stamp-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".", ".."])
def test_a_run_name_that_is_a_path_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConvplatError, match=r"expected a directory name, not a path"):
        new_run_dir(str(tmp_path / "runs"), name)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs"]


@pytest.mark.parametrize("parent", ["a-file", "a-file/below", "/proc/convplat-runs"])
def test_a_run_directory_that_cannot_be_created_is_one_line(tmp_path: Path, parent) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(ConvplatError, match=r"cannot create .*/r1: "):
        new_run_dir(str(tmp_path / parent), "r1")
    with pytest.raises(ConvplatError, match=r"cannot create .*: File name too long"):
        new_run_dir(str(tmp_path), "x" * 300)


def test_run_and_output_dirs_keep_a_uri_scheme(tmp_path: Path) -> None:
    parent = f"file://{tmp_path}/runs"
    run = new_run_dir(parent, "r1")
    assert run.uri == f"{parent}/r1" and (tmp_path / "runs" / "r1").is_dir()
    assert output_dir(run.uri) == f"{parent}/r1/{OUT_DIR}"  # localize train/eval
    assert output_dir(run.uri, f"file://{tmp_path}/elsewhere") == f"file://{tmp_path}/elsewhere"
    assert resolve(parent).child("r1", "plots/x.png").uri == f"{parent}/r1/plots/x.png"


def test_overwrite_clears_only_what_localize_train_wrote(tmp_path: Path) -> None:
    (tmp_path / "checkpoints" / "epoch-001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "epoch-001" / "meta.json").write_text("{}")
    (tmp_path / WEIGHTS).write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("the user's")
    clear_outputs(resolve(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwrite_refuses_a_folder_holding_a_run(tmp_path: Path) -> None:
    """`localize train --out RUN --overwrite` deleted a classification run's config.json,
    metrics.jsonl and checkpoints/ (names it shares with a localization folder)."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"model": "alexnet", "num_classes": 3}))
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ConvplatError, match="did not write"):
        clear_outputs(resolve(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints",
        "config.json",
        "metrics.jsonl",
    ]


def write_run(run: Path, **changes) -> Path:
    run.mkdir()
    record = dataclasses.asdict(TrainConfig(**changes))
    (run / "config.json").write_text(json.dumps({**record, "num_classes": 3}))
    return run


def test_resume_refuses_settings_it_cannot_honour(tmp_path: Path) -> None:
    run = str(write_run(tmp_path / "r", lr=0.01, milestones=(30, 60)))
    assert resume_config(run, {"epochs": 5, "max_failures": 0}).epochs == 5
    assert resume_config(run, {"lr": 0.01, "milestones": (30, 60)}).lr == 0.01  # as recorded
    with pytest.raises(ConfigError, match=r"--lr, --model cannot change a run"):
        resume_config(run, {"lr": 0.1, "model": "zfnet", "epochs": 9})


def test_workers_with_gpus_is_refused_before_ray_starts() -> None:
    with pytest.raises(ConfigError, match="--workers 2 with --gpus 2"):
        check_scaling(TrainConfig(gpus=2, workers=2))


def test_unknown_weights_are_refused(tmp_path: Path) -> None:
    run = str(write_run(tmp_path / "r"))
    with pytest.raises(ConfigError, match="--weights: expected one of final, best, latest"):
        load_run_model(run, "bestest")


def test_one_optimizer_builder_and_one_seed_formula() -> None:
    import torch

    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = TrainConfig(optimizer="adam", lr=1e-3)
    assert isinstance(build_optimizer(params, adam), torch.optim.Adam)
    sgd = build_optimizer(params, TrainConfig(optimizer="sgd", momentum=0.5))
    assert sgd.param_groups[0]["momentum"] == 0.5
    worker = Worker(0, 2, torch.device("cpu"), resolve("."), None, seed=3)
    other_rank = dataclasses.replace(worker, rank=1)
    first = worker.epoch_seeds(1).initial_seed()
    assert first == worker.epoch_seeds(1).initial_seed() != other_rank.epoch_seeds(1).initial_seed()
    assert first != worker.epoch_seeds(2).initial_seed()
    with pytest.raises(FloatingPointError, match="diverged"):
        check_finite(float("nan"))


def test_a_failed_run_writes_the_worker_traceback_to_error_log(tmp_path: Path, ray_session):
    from convplat.training.trainer import train_loop_per_worker

    config = TrainConfig(workers=1, batch_size=4, max_failures=0, progress=False)
    storage = tmp_path / "run"
    storage.mkdir()
    broken = {"config": {"no_such_setting": 1}}  # TrainConfig(**d) fails in the worker
    with pytest.raises(TrainingError) as failure:
        run_trainer(train_loop_per_worker, broken, config, storage=str(storage))
    message = str(failure.value)
    assert "\n" not in message and str(storage / "error.log") in message
    log = (storage / "error.log").read_text()
    assert "Traceback" in log and "no_such_setting" in log and "train_loop_per_worker" in log


def test_root_cause_drops_only_convplat_class_names() -> None:
    """A worker's DatasetError is a user-facing line; a RuntimeError keeps its kind."""
    shard = "Traceback ...\nconvplat.errors.DatasetError: shard train-000001.tar is damaged"
    assert root_cause(RuntimeError(shard)) == "shard train-000001.tar is damaged"
    other = "Traceback ...\nRuntimeError: CUDA out of memory"
    assert root_cause(RuntimeError(other)) == "RuntimeError: CUDA out of memory"
    assert root_cause(RuntimeError("")) == "RuntimeError"
