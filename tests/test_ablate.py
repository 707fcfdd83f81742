"""`convplat ablate`: two Table 3 variants, one epoch each, through the CLI on tiny shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_imagenet_tree

from convplat.cli.main import main
from convplat.config import PrepareConfig, TrainConfig
from convplat.errors import ConfigError
from convplat.pipeline import prepare
from convplat.training.ablate import expand_variants, format_markdown, job_slots
from convplat.training.checkpoints import load_run_model


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session) -> str:
    root = tmp_path_factory.mktemp("raw")
    make_imagenet_tree(root, classes=3, train_per_class=4, val_per_class=2, quirks=False)
    out = tmp_path_factory.mktemp("shards")
    prepare(PrepareConfig(source=str(root), out=str(out), shard_size=6, progress=False))
    return str(out)


def test_two_variants_one_epoch_through_the_cli(shards: str, tmp_path: Path, capsys):
    runs = tmp_path / "runs"
    argv = ["ablate", "zfnet-no3467", "alexnet_no3467", "--config", "demo", "--data", shards]
    argv += ["--out", str(runs), "--name", "study", "--epochs", "1", "--batch-size", "4"]
    argv += ["--workers", "1", "--cpus-per-worker", "1", "--loader-workers", "0"]
    argv += ["--limit-train-batches", "2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    study = runs / "study"
    table = json.loads((study / "table.json").read_text())
    assert table["parallel"] == 2  # 1 CPU per job, 2 CPUs in the test cluster: concurrent
    assert [r["variant"] for r in table["rows"]] == ["zfnet_no3467", "alexnet_no3467"]
    for row in table["rows"]:
        assert row["status"] == "done" and row["epochs"] == 1
        assert row["val_count"] == 6 and row["train_count"] == 12  # every image, once
        for key in ("train_top1_err", "val_top1_err", "val_top5_err"):
            assert 0.0 <= row[key] <= 1.0
        assert row["val_top5_err"] == 0.0  # 3 classes: the true one is always in the top 5
        assert row["table3_row"] == "removed layers 3,4,6,7"
        run = Path(row["run"])
        assert run.parent == study and run.name == row["variant"]
        config = json.loads((run / "config.json").read_text())
        assert config["model"] == row["variant"] and config["recipe"] == "demo"
        model, _ = load_run_model(str(run))  # the variant name rebuilds the variant
        assert list(model.named_layers()) == ["conv1", "conv2", "conv5", "fc8"]
        assert (run / "eval-center-train.json").is_file()
    paper = table["rows"][1]["paper_err_pct"]
    assert paper == {"train_top1": 71.1, "val_top1": 71.3, "val_top5": 50.1}
    markdown = (study / "table.md").read_text()
    assert markdown == format_markdown(table) and markdown in printed
    lines = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert len(lines) == 2 and lines[1].endswith("| 71.1 / 71.3 / 50.1 |")
    assert "| 9,854,568 |" in lines[1]  # alexnet_no3467's parameters (1000 classes)


def test_variant_lists_and_slots(ray_session):
    assert expand_variants(["zfnet,zfnet-b", "ZFNet-No34"]) == ["zfnet", "zfnet_b", "zfnet_no34"]
    block = expand_variants(["table3-zfnet"])
    assert block[0] == "zfnet" and len(block) == 9 and "zfnet_b_fc8192" in block
    with pytest.raises(ConfigError, match="more than once"):
        expand_variants(["zfnet", "zfnet"])
    with pytest.raises(ConfigError, match="one or more"):
        expand_variants([" , "])
    shared = TrainConfig(workers=2)  # cpus_per_worker 0: a job takes every CPU
    assert job_slots(shared, 5) == 1
    assert job_slots(TrainConfig(workers=1, cpus_per_worker=1), 5) == 2
    assert job_slots(TrainConfig(workers=2, cpus_per_worker=1), 5) == 1


def test_user_mistakes_exit_2_before_any_job(tmp_path: Path, shards: str, capsys):
    out = ["--out", str(tmp_path), "--data", shards]
    assert main(["ablate", "zfnet", "resnet50", *out]) == 2
    assert main(["ablate", "zfnet", "--parallel", "-1", *out]) == 2
    assert main(["ablate", "zfnet", "--config", "nope", *out]) == 2
    assert main(["ablate", "zfnet", "--gpus", "1", "--batch-size", "4", *out]) == 2  # resources
    not_shards = tmp_path / "not-shards.txt"
    not_shards.write_text("")
    bad_data = ["--out", str(tmp_path / "runs"), "--data", str(not_shards)]
    assert main(["ablate", "zfnet", *bad_data]) == 2  # wrote a table of pending rows first
    assert main(["ablate", "zfnet", *out[:2], "--data", shards, "--batch-size", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("convplat: error:") for line in err)
    assert "resnet50" in err[0] and "--parallel" in err[1] and "nope" in err[2]
    assert "--gpus 1" in err[3] and "no manifest.json" in err[4]
    assert "fewer than one batch of 64" in err[5]
    assert list(tmp_path.iterdir()) == [not_shards]  # nothing started, nothing written


def test_an_existing_study_name_is_refused(tmp_path: Path, shards: str, capsys):
    (tmp_path / "study").mkdir()
    quick = ["--epochs", "1", "--limit-train-batches", "1", "--batch-size", "4"]
    args = ["--name", "study", "--out", str(tmp_path), "--data", shards, *quick]
    assert main(["ablate", "zfnet", "--no-train-error", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study exists; choose another --name" in err[0]
    assert list((tmp_path / "study").iterdir()) == []
