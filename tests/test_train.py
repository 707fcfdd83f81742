"""`convplat train` / `evaluate` end to end on tiny shards with 2 CPU workers (gloo)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import make_imagenet_tree
from tensorboard_events import read_scalars

from convplat.config import PrepareConfig, TrainConfig
from convplat.pipeline import prepare
from convplat.training import evaluate, fit
from convplat.training.checkpoints import load_run_model
from convplat.training.tensorboard import EVENT_FILE
from convplat.training.trainer import resume_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("raw")
    make_imagenet_tree(
        root, classes=3, train_per_class=6, val_per_class=3, quirks=False, size=(300, 260)
    )
    out = tmp_path_factory.mktemp("shards")
    prepare(PrepareConfig(source=str(root), out=str(out), size=256, shard_size=5, progress=False))
    return str(out)


def tiny_config(shards: str, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        model="alexnet",
        data=shards,
        out=str(out),
        epochs=2,
        batch_size=4,
        workers=2,
        optimizer="adam",
        lr=1e-4,
        schedule="multistep",
        milestones=(2,),
        gamma=0.1,
        limit_train_batches=2,
        loader_workers=0,
        progress=False,
        max_failures=1,
        input_scale=1 / 64,
    )
    return dataclasses.replace(base, **changes)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run = Path(fit(tiny_config(shards, out, amp=True, channels_last=True, run_name="tiny")))
    return run


def test_train_writes_every_output(trained):
    run = trained
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "alexnet" and config["num_classes"] == 3
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    for row in metrics:
        for key in (
            "lr",
            "train_loss",
            "val_loss",
            "top1_err",
            "top5_err",
            "images_per_s",
            "seconds",
            "data_wait",
        ):
            assert row[key] is not None, key
        assert row["val_count"] == 9  # every validation image exactly once across 2 ranks
    assert metrics[0]["lr"] == metrics[1]["lr"] == pytest.approx(1e-4)  # decays after epoch 2
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-002"
    for epoch in (1, 2):
        checkpoint = run / "checkpoints" / f"epoch-{epoch:03d}"
        assert (checkpoint / "model.safetensors").is_file()
        state = torch.load(checkpoint / "state.pt", weights_only=True)  # nothing pickled
        assert {"optimizer", "scheduler", "rng"} <= set(state)
    assert (run / "plots" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scalars = read_scalars((run / EVENT_FILE).read_bytes())  # TensorBoard: each epoch once
    assert [step for step, _ in scalars["error/top1"]] == [1, 2]
    assert [v for _, v in scalars["loss/train"]] == pytest.approx(
        [m["train_loss"] for m in metrics], rel=1e-6
    )
    assert (run / "best.safetensors").is_file()
    model, _ = load_run_model(str(run))
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 3)


def test_evaluate_center_and_ten_crop(trained):
    center = evaluate(str(trained), mode="center", batch_size=4)
    ten = evaluate(str(trained), mode="ten-crop", batch_size=4)
    assert center["count"] == ten["count"] == 9
    for result in (center, ten):
        assert 0 <= result["top1_err"] <= 1 and result["top5_err"] == 0  # 3 classes < 5
    assert (trained / "eval-ten-crop-val.json").is_file()


def test_evaluate_loader_processes_follow_the_device(trained, monkeypatch, capsys):
    import convplat.training.data as data
    from convplat.cli.main import main
    from convplat.training.evaluate import eval_loader_workers

    asked = []
    original = data.eval_loader

    def recording(*args, **kwargs):
        asked.append(kwargs["num_workers"])
        return original(*args, **kwargs)

    monkeypatch.setattr(data, "eval_loader", recording)
    monkeypatch.setattr(data, "default_num_workers", lambda: 2)  # as on a 3-CPU machine
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [eval_loader_workers(n, cuda) for n in (None, -1, 0, 3)] == [2, 2, 0, 3]
    assert [eval_loader_workers(n, cpu) for n in (None, -1, 0, 3)] == [0, 0, 0, 3]
    default = evaluate(str(trained), batch_size=4, device="cpu")
    two = evaluate(str(trained), batch_size=4, num_workers=2)
    assert asked == [0, 2]  # before: always 0, with no way to ask for more
    assert default["count"] == two["count"] == 9
    assert default["top1_err"] == two["top1_err"]
    assert main(["evaluate", str(trained), "--loader-workers", "1", "--batch-size", "4"]) == 0
    assert main(["evaluate", str(trained), "--loader-workers", "-2"]) == 2
    assert asked == [0, 2, 1]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--loader-workers: expected >= -1, got -2" in err[0]


def test_a_run_without_final_weights_is_evaluated_from_its_checkpoint_and_says_so(
    trained, tmp_path, capsys
):
    import shutil

    from convplat.cli.main import main

    run = tmp_path / trained.name
    shutil.copytree(trained, run)
    (run / "model.safetensors").unlink()  # as a run stopped before its end
    assert main(["evaluate", str(run), "--batch-size", "4", "--loader-workers", "0"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no model.safetensors; using the weights of its latest" in err[0]
    assert "checkpoints/epoch-002/model.safetensors" in err[0]  # before: nothing said
    shutil.rmtree(run / "checkpoints")
    assert main(["evaluate", str(run), "--loader-workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no model.safetensors and no checkpoint" in err[0]


def test_resume_continues_at_next_epoch_with_same_schedule(trained, shards):
    run = trained
    config = resume_config(str(run), {"epochs": 3})
    fit(config, resume=str(run))
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[2]["lr"] == pytest.approx(1e-5)  # the restored MultiStepLR decayed at 2
    tensorboard = read_scalars((run / EVENT_FILE).read_bytes())
    assert [step for step, _ in tensorboard["loss/train"]] == [1, 2, 3]  # no epoch twice
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e["event"] == "resume"]
    assert resumes[-1]["from_epoch"] == 2


def _kill_rank_after(run: Path, checkpoint: str, rank: int, killed: list) -> None:
    """Once Ray Train has registered ``checkpoint``, SIGKILL the process of ``rank``.

    Registered means listed in the controller's checkpoint_manager_snapshot.json: a worker
    that dies before that restarts from the previous checkpoint (or from scratch).
    """
    import os
    import signal

    deadline = time.monotonic() + 240
    snapshot = run / "checkpoints" / "checkpoint_manager_snapshot.json"
    events = run / "events.jsonl"
    while time.monotonic() < deadline:
        try:
            registered = json.loads(snapshot.read_text())["checkpoint_results"]
        except (OSError, ValueError, KeyError):
            registered = []
        if any(r.get("checkpoint_dir_name") == checkpoint for r in registered):
            starts = [json.loads(line) for line in events.read_text().splitlines()]
            pid = [e for e in starts if e["event"] == "start"][-1]["pids"][rank]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_killed_worker_is_restarted_from_checkpoint(shards, tmp_path):
    config = tiny_config(
        shards,
        tmp_path,
        epochs=3,
        limit_train_batches=4,
        run_name="ft",
        schedule="constant",
        keep_checkpoints=1,
    )
    run = tmp_path / "ft"
    killed: list[int] = []
    watcher = threading.Thread(target=_kill_rank_after, args=(run, "epoch-001", 1, killed))
    watcher.start()
    fit(config)
    watcher.join()
    assert killed, "no Ray Train worker was killed"
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "resume" and e["from_epoch"] >= 1 for e in events)
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and killed[0] not in starts[1]["pids"]  # a new worker group


def test_gpus_on_a_cpu_only_cluster_fails_cleanly(shards, capsys, tmp_path):
    from convplat.cli.main import main

    code = main(
        [
            "train",
            "alexnet",
            "--gpus",
            "2",
            "--batch-size",
            "4",
            "--data",
            shards,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gpus 2" in err[0]
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_an_existing_run_is_never_taken_over(trained, shards, capsys):
    from convplat.cli.main import main

    before = (trained / "config.json").read_bytes()
    args = ["--out", str(trained.parent), "--data", shards, "--batch-size", "4"]
    assert main(["train", "zfnet", "--run-name", trained.name, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{trained.name} exists; use --resume" in err[0]
    assert (trained / "config.json").read_bytes() == before


def test_flags_that_cannot_be_honoured_are_refused(trained, shards, tmp_path, capsys):
    from convplat.cli.main import main

    args = ["--data", shards, "--out", str(tmp_path), "--batch-size", "4"]
    assert main(["train", "alexnet", "--gpus", "1", "--workers", "2", *args]) == 2
    assert main(["evaluate", str(trained), "--weights", "bestest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--workers 2 with --gpus 1" in err[0] and "bestest" in err[1]
    assert list(tmp_path.iterdir()) == []


def test_loader_workers_follow_the_cpus_a_worker_got(shards, tmp_path):
    # one worker on the 2-CPU test cluster gets both CPUs: -1 means one loader process
    config = tiny_config(
        shards, tmp_path, workers=1, loader_workers=-1, epochs=1, limit_val_batches=1
    )
    run = Path(fit(dataclasses.replace(config, limit_train_batches=1, run_name="lw")))
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["loader_workers"] for e in events if e["event"] == "start"] == [1]
    import ray

    here = ray.get_runtime_context().get_node_id()  # the local Ray's one node ran the rank
    assert [e["nodes"] for e in events if e["event"] == "start"] == [[here]]


def test_unknown_model_and_missing_shards_fail_cleanly(capsys, tmp_path):
    from convplat.cli.main import main

    assert main(["train", "resnet50"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["train", "alexnet", "--data", str(tmp_path / "none")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_shards_smaller_than_the_crops_are_refused_before_anything_starts(tmp_path, capsys):
    from convplat.cli.main import main

    make_imagenet_tree(tmp_path / "raw", classes=2, train_per_class=3, val_per_class=1)
    small = tmp_path / "small"
    prepare(PrepareConfig(source=str(tmp_path / "raw"), out=str(small), size=64, progress=False))
    runs = tmp_path / "runs"
    args = ["--data", str(small), "--out", str(runs), "--batch-size", "2"]
    assert main(["train", "overfeat_fast", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "64x64, smaller than overfeat_fast's 231x231 crops" in err[0]
    assert not runs.exists()  # refused before the run directory (and the cluster)


def test_visualize_commands_on_a_trained_run(trained, tmp_path):
    from conftest import jpeg_bytes
    from PIL import Image

    from convplat.cli.main import main

    image = tmp_path / "photo.JPEG"
    image.write_bytes(jpeg_bytes(300, 260, seed=7))
    run = str(trained)
    assert main(["visualize", "filters", run]) == 0
    assert main(["visualize", "occlusion", run, str(image), "--stride", "48"]) == 0
    assert main(["visualize", "deconv", run, "--layer", "2", "--maps", "1,2"]) == 0
    assert main(["visualize", "evolution", run, "--layer", "1", "--maps", "0"]) == 0
    pictures = sorted(p.name for p in (trained / "visualize").glob("*.png"))
    assert pictures == [
        "deconv-layer2.png",
        "evolution-layer1.png",
        "filters.png",
        "occlusion-photo.png",
    ]
    for name in pictures:
        with Image.open(trained / "visualize" / name) as picture:
            assert picture.width >= 20 and picture.height >= 20
            assert len(set(picture.convert("L").tobytes())) > 10  # not blank
