"""The command line: --help and --version work; user mistakes give one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convplat.cli.main import app, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "convplat.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_version():
    import convplat

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"convplat {convplat.__version__}"


def test_every_command_has_help(capsys):
    import typer

    names = [c.name for c in typer.main.get_command(app).commands.values()]
    assert {"demo-data", "prepare", "models"} <= set(names)
    for name in names:
        assert main([name, "--help"]) == 0
        assert "Usage" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ("prepare", "does/not/exist"),
        ("prepare", "--layout", "nonsense"),
        ("prepare", "--size", "0"),
        ("prepare", "--no-such-option"),
        ("demo-data", "--classes", "1"),
        ("demo-data", "--layout", "zip"),
        ("demo-data", "--distractors", "-2"),
        ("no-such-command",),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "convplat.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convplat: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_empty_dataset_is_a_user_error(tmp_path):
    (tmp_path / "empty" / "train" / "n01440764").mkdir(parents=True)
    result = run_cli("prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_models_table_lists_every_network_with_its_counts():
    result = run_cli("models")
    assert result.returncode == 0
    for name, params in (
        ("alexnet_1col", "62,378,344"),
        ("zfnet", "62,357,608"),
        ("overfeat_fast", "145,920,872"),
        ("overfeat_accurate", "144,656,488"),
    ):
        assert name in result.stdout and params in result.stdout
    assert "60,965,224" in result.stdout and "724,406,816" in result.stdout


def test_model_names_take_the_registry_form(tmp_path):
    """`create_model("ZFNet")` works, so `convplat train ZFNet` does too: it gets as far as the
    (missing) shards instead of stopping at "unknown model"."""
    from convplat.cli.train import canonical_model

    assert canonical_model("ZFNet") == "zfnet"
    assert canonical_model(" Overfeat-Fast ") == "overfeat_fast"
    result = run_cli("train", "ZFNet", "--data", str(tmp_path / "none"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "unknown model" not in result.stderr and "manifest.json" in result.stderr


def test_commands_pass_only_the_options_given():
    """None means "not given": the config class (or library signature) keeps its default."""
    from convplat.cli.common import given

    values = {"epochs": None, "lr": 0.1, "mode": "head", "run": "r"}
    assert given(values, exclude=("run",), rename={"mode": "modes"}) == {"lr": 0.1, "modes": "head"}


def _models_raising(monkeypatch, exc: BaseException) -> None:
    """`convplat models` raising ``exc`` from inside its library call."""
    import convplat.training.models as models

    def fail():
        raise exc

    monkeypatch.setattr(models, "describe_models", fail)


def test_a_full_disk_is_one_line_naming_the_file(monkeypatch, capsys):
    import errno

    full = OSError(errno.ENOSPC, "No space left on device", "/data/shards/train-000003.tar")
    _models_raising(monkeypatch, full)
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full writing /data/shards/train-000003.tar" in err[0]


def test_a_full_disk_inside_a_wrapper_is_found(monkeypatch, capsys):
    try:
        try:
            raise OSError("[errno 28] No space left on device")  # pyarrow's form: no errno
        except OSError as inner:
            raise RuntimeError("shard writer failed") from inner
    except RuntimeError as outer:
        _models_raising(monkeypatch, outer)
    assert main(["models"]) == 2
    assert "disk full" in capsys.readouterr().err


_RAY_TIMES_OUT = """
import sys, ray, ray._private.node
import convplat.training.models as models
from convplat.cli.main import main

def timed_out(self, *args, **kwargs):
    raise Exception("The current node timed out during startup.")  # Ray's own words

ray._private.node.Node.__init__ = timed_out
models.describe_models = lambda: ray.init(num_cpus=1)
code = main(["models"])
print("initialized" if ray.is_initialized() else "not initialized")
sys.exit(code)
"""


def test_a_ray_start_up_failure_is_one_line():
    # In its own process: this session's tests share one running Ray, and a second
    # ray.init there fails for another reason.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", _RAY_TIMES_OUT], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr  # (Ray itself may log a warning line first)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("convplat: error: Ray did not start")
    assert "timed out during startup" in last
    assert done.stdout.strip() == "not initialized"


def test_a_ray_task_error_shows_the_users_mistake_not_the_worker_traceback(monkeypatch, capsys):
    from ray.exceptions import RayTaskError

    from convplat.errors import DatasetError

    original = DatasetError("shard train-000001.tar is truncated")
    wrapped = RayTaskError("write_shard", "Traceback ...\n  many lines", original)
    _models_raising(monkeypatch, wrapped.as_instanceof_cause())
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip() == (
        "convplat: error: shard train-000001.tar is truncated"
    )


def test_a_bug_keeps_its_traceback(monkeypatch):
    _models_raising(monkeypatch, KeyError("a bug"))
    with pytest.raises(KeyError):
        main(["models"])
    _models_raising(monkeypatch, OSError(13, "Permission denied", "/x"))  # not a full disk
    with pytest.raises(OSError):
        main(["models"])
