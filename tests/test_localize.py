"""OverFeat localization: box utilities with known answers, the regressor's geometry and
targets, ILSVRC scoring, and `convplat localize train|eval` end to end on demo data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convplat.cli.main import main
from convplat.localize.boxes import (
    _match_rows,
    box_intersection,
    box_iou,
    box_merge,
    greedy_merge,
    match_score,
)
from convplat.localize.localize_eval import Guess, guesses, localization_correct
from convplat.localize.multiscale import mirror
from convplat.localize.regressor import (
    BoxRegressor,
    to_image_boxes,
    to_window_boxes,
    window_targets,
)


def square(x: float, y: float, side: float = 10.0) -> list[float]:
    return [x, y, x + side, y + side]


# --- IoU, match score, merge ---------------------------------------------------------------------


def test_box_iou_and_intersection_match_direct_computation():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    # Direct: overlap 1x1 of two 2x2 boxes -> 1 / (4 + 4 - 1); disjoint -> 0; identical -> 1;
    # a 2x2 box inside a 4x4 one -> 4 / 16; the 4x4 box and (1,1,3,3) -> 4 / 16.
    expected_iou = torch.tensor([[1 / 7, 0.0, 1.0], [4 / 16, 0.0, 4 / 16]])
    expected_inter = torch.tensor([[1.0, 0.0, 4.0], [4.0, 0.0, 4.0]])
    assert torch.allclose(box_iou(a, b), expected_iou)
    assert torch.allclose(box_intersection(a, b), expected_inter)


def test_match_score_reading_of_the_paper():
    base = torch.tensor([square(0, 0)])
    others = torch.tensor([square(0, 0), square(2.5, 0), square(5, 0), square(40, 0)])
    scores = match_score(base, others)[0]
    # identical: 0; a quarter side apart: 0.25 + (1 - 7.5/12.5); half: 0.5 + (1 - 5/15);
    # disjoint, 4 sides apart: 4 + 1.
    expected = torch.tensor([0.0, 0.25 + 0.4, 0.5 + 2 / 3, 5.0])
    assert torch.allclose(scores, expected, atol=1e-6)
    assert torch.all(scores[1:] > scores[:-1])  # farther apart = worse match
    # symmetric, and the numpy version the merge loop uses agrees
    assert torch.allclose(match_score(others, base)[:, 0], scores)
    rows = _match_rows(others.double().numpy(), others.double().numpy())
    assert np.allclose(rows, match_score(others, others).double().numpy(), atol=1e-6)


def test_box_merge_averages_coordinates():
    merged = box_merge(torch.tensor([0.0, 0.0, 10.0, 10.0]), torch.tensor([2.0, 4.0, 12.0, 20.0]))
    assert merged.tolist() == [1.0, 2.0, 11.0, 15.0]


def test_greedy_merge_known_result():
    boxes = torch.tensor(
        [
            square(0, 0),  # 0 \
            square(1, 0),  # 1  } one cluster of label 0: (0,1) merge first, then with 3
            square(3, 0),  # 2 /
            square(100, 100),  # 3  far away: stays alone
            square(0, 0),  # 4  label 1: never merges with label 0's boxes
        ]
    )
    scores = torch.tensor([1.0, 2.0, 0.5, 3.0, 0.25])
    labels = torch.tensor([0, 0, 0, 0, 1])
    merged_boxes, merged_scores, merged_labels = greedy_merge(boxes, scores, labels, 1.0)
    # Pairwise averages, in order: (0,1) -> x 0.5; then with box 2 -> x (0.5 + 3) / 2 = 1.75.
    # Scores accumulate: 1 + 2 + 0.5 = 3.5. Sorted by score: 3.5, 3.0, 0.25.
    assert merged_scores.tolist() == [3.5, 3.0, 0.25]
    assert merged_labels.tolist() == [0, 0, 1]
    assert torch.allclose(merged_boxes[0], torch.tensor([1.75, 0.0, 11.75, 10.0]))
    assert merged_boxes[1].tolist() == square(100, 100)
    assert merged_boxes[2].tolist() == square(0, 0)


def test_greedy_merge_threshold_stops_merging():
    boxes = torch.tensor([square(0, 0), square(5, 0)])  # match score 0.5 + 2/3 ~ 1.17
    scores, labels = torch.tensor([1.0, 1.0]), torch.tensor([0, 0])
    assert greedy_merge(boxes, scores, labels, 1.0)[0].shape == (2, 4)
    assert greedy_merge(boxes, scores, labels, 1.2)[0].shape == (1, 4)
    empty = greedy_merge(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long), 1)
    assert [t.shape[0] for t in empty] == [0, 0, 0]


def _naive_merge(boxes: torch.Tensor, scores: torch.Tensor, threshold: float):
    """PAPERS §3.5 literally: recompute every pair each round."""
    kept, points = list(boxes), scores.tolist()
    while len(kept) > 1:
        matrix = match_score(torch.stack(kept), torch.stack(kept))
        matrix.fill_diagonal_(float("inf"))
        i, j = divmod(int(matrix.argmin()), len(kept))
        if matrix[i, j] > threshold:
            break
        box, score = box_merge(kept[i], kept[j]), points[i] + points[j]
        kept = [b for n, b in enumerate(kept) if n not in (i, j)] + [box]
        points = [p for n, p in enumerate(points) if n not in (i, j)] + [score]
    order = torch.tensor(points).argsort(descending=True)
    return torch.stack(kept)[order], torch.tensor(points)[order]


def test_greedy_merge_equals_the_naive_algorithm():
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        n = int(torch.randint(2, 30, (1,), generator=generator))
        corner = torch.rand(n, 2, generator=generator) * 100
        size = torch.rand(n, 2, generator=generator) * 40 + 5
        boxes = torch.cat([corner, corner + size], dim=1)
        scores = torch.rand(n, generator=generator)
        got_boxes, got_scores, _ = greedy_merge(boxes, scores, torch.zeros(n, dtype=torch.long), 1)
        want_boxes, want_scores = _naive_merge(boxes, scores, 1.0)
        assert torch.allclose(got_scores, want_scores, atol=1e-5)
        assert torch.allclose(got_boxes, want_boxes, atol=1e-4)


# --- regressor geometry and targets --------------------------------------------------------------


def test_regressor_slides_like_the_classifier():
    regressor = BoxRegressor(16, kernel=3, num_classes=5, hidden=(8, 4))
    out = regressor(torch.randn(2, 16, 5, 7))  # (B, C, h, w) -> (B, 4, h-2, w-2)
    assert out.shape == (2, 4, 3, 5)
    # the untrained output starts near "the object fills the window"
    assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.tensor([0.0, 0.0, 1.0, 1.0]), atol=0.1)
    per_class = BoxRegressor(16, kernel=3, num_classes=5, per_class=True, hidden=(8, 4))
    out = per_class(torch.randn(2, 16, 5, 7))
    assert out.shape == (2, 20, 3, 5)
    picked = per_class.select(out, torch.tensor([4, 1]))
    assert torch.equal(picked[0], out[0, 16:20]) and torch.equal(picked[1], out[1, 4:8])


def test_window_coordinates_round_trip():
    windows = torch.tensor([[0.0, 0.0, 224.0, 224.0], [32.0, 64.0, 256.0, 288.0]])
    boxes = torch.tensor([[10.0, 20.0, 100.0, 200.0], [40.0, 70.0, 250.0, 280.0]])
    relative = to_window_boxes(boxes, windows, 224)
    assert torch.allclose(relative[1], torch.tensor([8 / 224, 6 / 224, 218 / 224, 216 / 224]))
    assert torch.allclose(to_image_boxes(relative, windows, 224), boxes)


def test_window_targets_train_only_windows_that_hold_most_of_the_box():
    windows = torch.tensor([[0.0, 0.0, 100.0, 100.0], [60.0, 0.0, 160.0, 100.0]])
    # Box A (60 x 40) lies wholly in window 0 and 2/3 in window 1; box B (20 x 40) lies
    # 18/20 = 0.9 in window 1 and not at all in window 0.
    boxes = torch.tensor([[40.0, 10.0, 100.0, 50.0], [142.0, 10.0, 162.0, 50.0]])
    targets, mask = window_targets(boxes, windows, 100, min_inside=0.5)
    assert mask.tolist() == [True, True]
    assert torch.allclose(targets[0], torch.tensor([0.4, 0.1, 1.0, 0.5]))
    # window 1 may take either box; A has the higher IoU with it (1600/10800 > 720/10080)
    assert torch.allclose(targets[1], torch.tensor([-0.2, 0.1, 0.4, 0.5]))
    targets, mask = window_targets(boxes, windows, 100, min_inside=0.8)
    assert mask.tolist() == [True, True]  # now only B qualifies for window 1
    assert torch.allclose(targets[1], torch.tensor([0.82, 0.1, 1.02, 0.5]))
    _, mask = window_targets(boxes, windows, 100, min_inside=0.95)
    assert mask.tolist() == [True, False]
    _, mask = window_targets(torch.zeros((0, 4)), windows, 100)
    assert mask.tolist() == [False, False]


def test_mirror_flips_boxes_with_the_image():
    assert mirror(torch.tensor([[10.0, 5.0, 30.0, 20.0]]), 100).tolist() == [
        [70.0, 5.0, 90.0, 20.0]
    ]


# --- ILSVRC localization scoring -----------------------------------------------------------------


def test_guesses_take_each_class_best_box_and_rank_classes():
    boxes = torch.tensor([square(0, 0), square(50, 50), square(1, 1), square(9, 9)])
    scores = torch.tensor([0.9, 3.0, 2.0, 0.1])
    labels = torch.tensor([2, 0, 2, 1])
    answers = guesses(boxes, scores, labels)
    assert [a.label for a in answers] == [0, 2, 1]
    assert answers[1].box == square(1, 1)


def test_localization_needs_class_and_iou():
    truth = torch.tensor([square(0, 0), square(50, 50)])
    assert localization_correct(Guess(3, square(1, 0), 1.0), 3, truth)  # IoU 9/11
    assert localization_correct(Guess(3, square(51, 50), 1.0), 3, truth)  # the second box
    assert not localization_correct(Guess(2, square(0, 0), 1.0), 3, truth)  # wrong class
    assert not localization_correct(Guess(3, square(5, 0), 1.0), 3, truth)  # IoU 1/3
    assert not localization_correct(Guess(3, square(0, 0), 1.0), 3, torch.zeros((0, 4)))


# --- end to end through the CLI ------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, ray_session):
    """Demo shards (3 classes, 2 objects per image) and an untrained AlexNet run on them:
    localization only needs frozen conv layers, not good ones."""
    from convplat.config import PrepareConfig
    from convplat.demo import make_demo_data
    from convplat.pipeline import prepare
    from convplat.training.checkpoints import state_dict_bytes
    from convplat.training.models import create_model

    root = tmp_path_factory.mktemp("localize")
    make_demo_data(
        out=root / "data",
        classes=3,
        train_per_class=4,
        val_per_class=2,
        caltech_classes=2,
        caltech_per_class=1,
        voc=False,
        objects_per_image=2,
    )
    shards = root / "shards"
    prepare(
        PrepareConfig(
            source=str(root / "data" / "imagenet"), out=str(shards), shard_size=4, progress=False
        )
    )
    run = root / "runs" / "alexnet-demo"
    run.mkdir(parents=True)
    torch.manual_seed(0)
    (run / "model.safetensors").write_bytes(
        state_dict_bytes(create_model("alexnet", num_classes=3))
    )
    config = {"model": "alexnet", "num_classes": 3, "data": str(shards), "input_scale": 1 / 64}
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_regression_loss_falls_on_a_fixed_batch(demo_run):
    from convplat.localize.box_data import train_box_loader
    from convplat.localize.multiscale import (
        build_regressor,
        frames_to_inputs,
        freeze_all,
        regression_loss,
    )
    from convplat.pipeline.shardset import load_stats
    from convplat.training.augment import BatchTransform
    from convplat.training.checkpoints import load_run_model

    model, record = load_run_model(str(demo_run))
    model = freeze_all(model)
    torch.manual_seed(0)
    regressor = build_regressor(model, {"per_class": False, "hidden": (32, 16)})
    transform = BatchTransform.from_stats(load_stats(record["data"]), input_scale=1 / 64)
    loader = train_box_loader(record["data"], batch_size=2, num_workers=0)
    assert len(loader) == 12 // 2  # every demo image has a box of its class
    batch = next(iter(loader.epoch(1)))
    assert all(len(b) >= 1 for b in batch.boxes)
    images = frames_to_inputs(batch.images, transform)
    optimizer = torch.optim.Adam(regressor.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss, count = regression_loss(model, regressor, images, batch.labels, batch.boxes, [245])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert count > 0
    assert losses[-1] < 0.7 * losses[0]


def test_localize_train_and_eval_through_the_cli(demo_run, capsys):
    run = str(demo_run)
    args = ["--scales", "245", "--hidden", "32,16", "--batch-size", "4", "--workers", "2"]
    code = main(["localize", "train", run, *args, "--limit-train-batches", "2", "--epochs", "1"])
    assert code == 0
    out = demo_run / "localize"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1]
    assert metrics[0]["train_windows"] > 0 and np.isfinite(metrics[0]["train_loss"])
    assert metrics[0]["val_loss"] is not None
    assert (out / "regressor.safetensors").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["per_class"] is False

    # a second training into the same folder must be asked for
    capsys.readouterr()
    assert main(["localize", "train", run, *args]) == 2
    assert "--overwrite" in capsys.readouterr().err

    # --overwrite really replaces it: Ray Train starts afresh, not from the old checkpoints
    again = ["--limit-train-batches", "1", "--epochs", "1", "--overwrite"]
    assert main(["localize", "train", run, *args, *again]) == 0
    assert "resumed from checkpoint" not in capsys.readouterr().err
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["start"]
    assert events[0]["loader_workers"] == 0  # each of the 2 workers got 1 of the 2 CPUs
    assert (out / "checkpoints" / "latest").read_text().strip() == "epoch-001"

    code = main(["localize", "eval", run, "--scales", "245,281", "--samples", "2", "--limit", "4"])
    assert code == 0
    result = json.loads((out / "eval-val.json").read_text())
    assert result["count"] == 4 == len(result["images"])
    for key in ("top1_loc_err", "top5_loc_err"):
        assert 0.0 <= result[key] <= 1.0
    assert result["top5_loc_err"] <= result["top1_loc_err"]
    assert all(1 <= len(image["guesses"]) <= 3 for image in result["images"])
    assert (out / "boxes-val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args",
    [
        ["localize", "eval", "{run}", "--scales", "100"],  # too small for one window
        ["localize", "eval", "{run}", "--top-k", "0"],
        ["localize", "eval", "{run}", "--loader-workers", "-2"],
        ["localize", "train", "{run}", "--loader-workers", "-2"],
        ["localize", "train", "{run}", "--scales", "a,b"],
        ["localize", "eval", "/no/such/run"],
        ["localize", "eval", "{run}", "--scales", "0"],  # was a torch traceback
        ["localize", "eval", "{run}", "--scales", "50"],
        ["localize", "eval", "{run}", "--device", "bogus"],
        ["localize", "eval", "{run}", "--device", "cuda:99"],
        ["localize", "eval", "{run}", "--threshold", "nan"],  # was accepted
        ["localize", "eval", "{run}", "--samples", "-1"],
        ["localize", "train", "{run}", "--batch-size", "4", "--out", "{file}", "--overwrite"],
        ["localize", "train", "{run}", "--batch-size", "4", "--out", "/proc/convplat-no/x"],
    ],
)
def test_localize_user_mistakes_exit_2(args, demo_run, capsys, tmp_path):
    out = tmp_path / "fresh"
    (tmp_path / "a-file").write_text("the user's")
    args = [a.replace("{run}", str(demo_run)) for a in args]
    args = [a.replace("{file}", str(tmp_path / "a-file")) for a in args]
    if args[1] == "eval" and "/no/such" not in args[2]:
        # needs a trained regressor: reuse the shape of one, untrained, without Ray
        from convplat.localize.multiscale import build_regressor
        from convplat.training.checkpoints import load_run_model, state_dict_bytes

        model, run_config = load_run_model(str(demo_run))
        record = {"per_class": False, "hidden": [8, 4], "scales": [245], "stride": "fine"}
        out.mkdir()
        (out / "regressor.safetensors").write_bytes(
            state_dict_bytes(build_regressor(model, record))
        )
        (out / "config.json").write_text(
            json.dumps({**record, "weights": "final", "data": run_config["data"]})
        )
        args += ["--out", str(out)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convplat: error:") and "\n" not in err


def test_localize_train_checks_scales_before_ray_starts(demo_run, capsys, tmp_path):
    """A scale too small for one window failed in the Ray workers, after the folder was made
    (a rerun then needed --overwrite)."""
    out = tmp_path / "out"
    args = ["--scales", "100", "--batch-size", "4", "--out", str(out)]
    capsys.readouterr()
    assert main(["localize", "train", str(demo_run), *args]) == 2
    assert "--scales: 100 too small" in capsys.readouterr().err
    assert not out.exists()


def test_localize_train_checks_the_weights_before_ray_starts(demo_run, capsys, tmp_path):
    """Damaged weights failed in the Ray workers, after the output folder was made."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text((demo_run / "config.json").read_text())
    (run / "model.safetensors").write_bytes(b"\x10\x00garbage")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["localize", "train", str(run), "--batch-size", "4", "--out", str(out)]) == 2
    assert "model.safetensors: not a safetensors file" in capsys.readouterr().err
    assert not out.exists()


def test_localize_train_refuses_a_detection_run(demo_run, capsys, tmp_path):
    detection = tmp_path / "det"
    detection.mkdir()
    config = json.loads((demo_run / "config.json").read_text())
    config |= {"task": "detect", "num_classes": 4, "source_run": str(demo_run)}
    (detection / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["localize", "train", str(detection)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a detect run, not a classification run" in err and str(demo_run) in err
    assert sorted(p.name for p in detection.iterdir()) == ["config.json"]


def test_per_class_regression_trains_only_the_label_boxes(demo_run):
    from convplat.localize.box_data import eval_box_loader
    from convplat.localize.multiscale import (
        build_regressor,
        frames_to_inputs,
        freeze_all,
        regression_loss,
    )
    from convplat.pipeline.shardset import load_stats
    from convplat.training.augment import BatchTransform
    from convplat.training.checkpoints import load_run_model

    model, record = load_run_model(str(demo_run))
    model = freeze_all(model)
    regressor = build_regressor(model, {"per_class": True, "hidden": (8, 4)})
    transform = BatchTransform.from_stats(load_stats(record["data"]), input_scale=1 / 64)
    batch = next(iter(eval_box_loader(record["data"], "val", batch_size=1, num_workers=0)))
    loss, count = regression_loss(
        model,
        regressor,
        frames_to_inputs(batch.images, transform),
        batch.labels,
        batch.boxes,
        [245],
    )
    loss.backward()
    assert count > 0
    grad = regressor.layers[-1].bias.grad.view(3, 4).abs().sum(dim=1)  # per class
    label = int(batch.labels[0])
    assert grad[label] > 0
    assert all(grad[c] == 0 for c in range(3) if c != label)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())
