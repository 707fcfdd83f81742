"""Configs: one validator, strict types where settings are merged, one line naming the key and
the file for every bad value, and recipe files that cannot say where a run goes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convplat.cli.main import main
from convplat.config import PrepareConfig, TrainConfig, TransferConfig
from convplat.errors import ConfigError


def train_with(tmp_path: Path, toml: str, *extra: str) -> list[str]:
    recipe = tmp_path / "mine.toml"
    recipe.write_text(toml)
    return [
        "train",
        "alexnet",
        "--config",
        str(recipe),
        "--data",
        str(tmp_path / "no-shards"),
        *extra,
    ]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convplat: error:"), err
    return err[0]


@pytest.mark.parametrize(
    "toml, key, expected",
    [
        ('epochs = "3"', "epochs", "an integer"),
        ('milestones = "30,50"', "milestones", "a list of integers"),
        ("batch_size = 32.0", "batch_size", "an integer"),
        ('amp = "yes"', "amp", "true or false"),
        ("milestones = [30, 50.5]", "milestones", "a list of integers"),
        ('lr = "0.1"', "lr", "a number"),
    ],
)
def test_a_toml_value_of_the_wrong_type_is_one_line_naming_file_and_key(
    tmp_path, capsys, toml, key, expected
):
    assert main(train_with(tmp_path, toml)) == 2
    line = one_error_line(capsys)
    assert f"mine.toml: {key}: expected {expected}" in line, line


def test_the_cli_values_and_toml_lists_pass(tmp_path, capsys):
    args = train_with(tmp_path, "milestones = [30, 50]\nlr = 1\namp = true", "--epochs", "3")
    assert main([*args, "--batch-size", "64", "--amp"]) == 2  # gets as far as the missing shards
    assert "manifest.json" in one_error_line(capsys)


def test_a_toml_syntax_error_is_one_line_naming_the_file(tmp_path, capsys):
    assert main(train_with(tmp_path, "epochs = = 3")) == 2
    line = one_error_line(capsys)
    assert "mine.toml" in line and "not valid TOML" in line


def test_a_toml_file_that_is_not_utf8_is_one_line_naming_the_file(tmp_path, capsys):
    args = train_with(tmp_path, "")
    (tmp_path / "mine.toml").write_bytes(b"\xff\xfeepochs = 3\n")  # e.g. saved as UTF-16
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "mine.toml: not valid TOML (not UTF-8 text" in line, line


@pytest.mark.parametrize("key", ["address", "out", "data", "run_name"])
def test_a_recipe_file_cannot_say_where_the_run_goes(tmp_path, capsys, key):
    assert main(train_with(tmp_path, f'{key} = "elsewhere"')) == 2
    line = one_error_line(capsys)
    assert f"mine.toml: {key} may not be set here" in line, line
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    "content", ['{"model": "alexnet", "epochs": ', "[1, 2]", '{"epochs": "3"}']
)
def test_a_damaged_config_json_on_resume_is_one_line_naming_it(tmp_path, capsys, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(content)
    assert main(["train", "--resume", str(run)]) == 2
    assert "config.json" in one_error_line(capsys)


def test_python_api_values_are_type_checked_too():
    with pytest.raises(ConfigError, match="epochs: expected an integer, got '3'"):
        TrainConfig(epochs="3")
    with pytest.raises(ConfigError, match="splits: expected an integer"):
        TransferConfig(splits="5")
    with pytest.raises(ConfigError, match="size: expected an integer"):
        PrepareConfig(size=256.0)
    assert TrainConfig(milestones=[30, 50]).milestones == (30, 50)  # lists become tuples
    assert TransferConfig(modes="head,scratch").modes == ("head", "scratch")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--lr", "inf"], "--lr: expected a finite value > 0, got inf"),
        (["--weight-decay", "inf"], "--weight-decay: expected a finite value >= 0"),
        (["--seed", "-1"], "--seed: expected >= 0, got -1"),
        (["--max-failures", "-2"], "--max-failures: expected >= 0, or -1 for no limit"),
        (["--cpus-per-worker", "-1"], "--cpus-per-worker: expected >= 0"),
        (["--limit-train-batches", "-1"], "--limit-train-batches: expected >= 0 (0: all)"),
        (["--limit-val-batches", "-1"], "--limit-val-batches: expected >= 0 (0: all)"),
    ],
)
def test_values_that_would_fail_only_after_training_starts_are_refused(
    tmp_path, capsys, flags, expected
):
    # --lr inf trained an epoch of nan losses and two worker restarts before failing.
    assert main(["train", "alexnet", "--data", str(tmp_path), *flags]) == 2
    assert expected in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    assert TrainConfig(max_failures=-1).max_failures == -1  # Ray's "no limit" stays allowed


def test_one_validator_for_the_shared_settings():
    """world_size / per_worker_batch and the choices are defined once and shared."""
    from convplat.config import EXECUTORS, OPTIMIZERS, WorkerScale
    from convplat.config.transfer import EXECUTORS as transfer_executors

    assert transfer_executors is EXECUTORS and "sgd" in OPTIMIZERS
    config = TrainConfig(gpus=0, workers=4, batch_size=128)
    assert isinstance(config, WorkerScale) and config.per_worker_batch == 32
    with pytest.raises(ConfigError, match="multiple of the 3 workers"):
        TrainConfig(workers=3, batch_size=128)
    with pytest.raises(ConfigError, match="--loader-workers: expected >= 0, or -1"):
        TrainConfig(loader_workers=-2)


def test_resume_keeps_the_recorded_settings(tmp_path):
    from convplat.config import resume_train_config

    run = tmp_path / "run"
    run.mkdir()
    saved = {"model": "zfnet", "epochs": 2, "milestones": [1], "lr": 0.02, "unrelated": 1}
    (run / "config.json").write_text(json.dumps(saved))
    config = resume_train_config(str(run), {"epochs": 5, "lr": 0.02})
    assert (config.model, config.epochs, config.milestones, config.lr) == ("zfnet", 5, (1,), 0.02)
    with pytest.raises(ConfigError, match="--lr cannot change a run that exists"):
        resume_train_config(str(run), {"epochs": 5, "lr": 9.0})  # never silently ignored
    del saved["model"]
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="lacks model: not a training run"):
        resume_train_config(str(run), {"epochs": 5})  # before: resumed as alexnet, the default


def test_the_joined_cluster_is_announced(capsys, monkeypatch):
    from convplat.cli.common import announce_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    announce_cluster(None)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    announce_cluster(None)
    assert capsys.readouterr().err.strip() == "convplat: joining the Ray cluster at 10.0.0.5:6379"


def test_train_says_which_cluster_it_joins(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    args = ["train", "alexnet", "--data", str(tmp_path / "none"), "--address", "10.0.0.5:6379"]
    assert main(args) == 2  # the missing shards stop it before Ray is joined
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "convplat: joining the Ray cluster at 10.0.0.5:6379"
    assert err[1].startswith("convplat: error:") and len(err) == 2
