"""The command line: --help and --version work; user mistakes give one line and exit 2."""

from __future__ import annotations

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
