"""OverFeat detection: IoU, matching and AP against direct computations; window labels and
negative mining; the patch path equals the dense map; `convplat detect train/eval` end to end."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convplat.cli.main import main
from convplat.config.localize import DetectConfig
from convplat.localize.boxes import box_iou
from convplat.localize.detect_eval import detect_image
from convplat.localize.detect_model import add_background_class
from convplat.localize.detection_data import (
    IGNORE,
    DetectionSample,
    score_maps,
    select_windows,
    training_windows,
    whole_image_input,
    window_labels,
)
from convplat.localize.multiscale import build_regressor
from convplat.localize.regressor import BoxRegressor
from convplat.metrics import DetectionAP, match_detections
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.dense import offset_count, window_step
from convplat.training.models import create_model, reinitialize


def direct_iou(a, b) -> float:
    """IoU of two xyxy boxes from the definition."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_box_iou_matches_the_definition():
    a = [[0, 0, 10, 10], [5, 5, 15, 25], [100, 100, 110, 101]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [2, 3, 7, 9]]
    got = box_iou(t(a), t(b))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            assert float(got[i, j]) == pytest.approx(direct_iou(x, y), abs=1e-6)
    assert float(got[0, 0]) == 1.0 and float(got[0, 1]) == pytest.approx(1 / 3)


def test_window_labels_positive_ignore_background():
    windows = t([[0, 0, 100, 100], [10, 0, 110, 100], [40, 0, 140, 100], [200, 200, 300, 300]])
    boxes, labels = t([[0, 0, 100, 100]]), torch.tensor([2])
    got = window_labels(windows, boxes, labels, background=5)
    # IoU 1.0 and 0.818 -> class 2; 60/140 = 0.43 -> ignored; 0 -> background
    assert got.tolist() == [2, 2, IGNORE, 5]
    assert window_labels(windows, t([]), torch.zeros(0), background=5).tolist() == [5] * 4
    # Two boxes: each window takes the class of the box it overlaps best.
    two = window_labels(
        t([[0, 0, 10, 10], [50, 50, 60, 60]]),
        t([[50, 50, 60, 61], [0, 0, 10, 11]]),
        torch.tensor([1, 0]),
        background=3,
    )
    assert two.tolist() == [0, 1]


def test_select_windows_keeps_positives_and_mines_offending_negatives():
    background = 3
    targets = torch.tensor([0, 3, 3, 3, 3, 3, 1, IGNORE, 3, 3])
    scores = torch.tensor([0.9, 0.1, 0.95, 0.2, 0.8, 0.3, 0.5, 0.99, 0.05, 0.0])
    chosen = select_windows(
        targets,
        scores,
        background,
        random_negatives=2,
        hard_negatives=2,
        generator=torch.Generator().manual_seed(0),
    )
    chosen = chosen.tolist()
    assert chosen[:2] == [0, 6]  # every positive
    assert chosen[2:4] == [2, 4]  # the two most offending negatives (0.95, 0.8); 7 is ignored
    assert len(chosen) == 6 and len(set(chosen)) == 6
    assert all(targets[i] == background for i in chosen[4:]) and 7 not in chosen


def test_match_detections_duplicates_wrong_class_and_low_iou_are_false_positives():
    gt = t([[0, 0, 10, 10], [20, 20, 30, 30]])
    gt_labels = torch.tensor([0, 1])
    boxes = t([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [0, 0, 10, 4], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([0, 0, 0, 0, 1])
    hits = match_detections(boxes, scores, labels, gt, gt_labels)
    # hit; duplicate of a matched box; right place wrong class; IoU 0.4; hit
    assert hits.tolist() == [True, False, False, False, True]
    # Score order decides who matches: the lower-scored exact box comes second.
    hits = match_detections(boxes[:2], torch.tensor([0.1, 0.9]), labels[:2], gt, gt_labels)
    assert hits.tolist() == [False, True]
    # Best-IoU *unmatched* box: the second detection falls back to the other ground truth.
    gt2 = t([[0, 0, 10, 10], [1, 0, 11, 10]])
    hits = match_detections(
        t([[0, 0, 10, 10], [0, 0, 10, 10]]),
        torch.tensor([0.9, 0.8]),
        torch.tensor([0, 0]),
        gt2,
        torch.tensor([0, 0]),
    )
    assert hits.tolist() == [True, True]
    assert (
        match_detections(
            t([]), torch.zeros(0), torch.zeros(0, dtype=torch.long), gt, gt_labels
        ).tolist()
        == []
    )


def test_ap_of_a_small_case_by_hand():
    ap = DetectionAP(num_classes=2)
    gt, gt_labels = t([[0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 0])
    dets = t([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]])
    ap.add(dets, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0]), gt, gt_labels)
    result = ap.result()
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope: 1 on [0, .5], 2/3 on (.5, 1]
    assert result["ap"][0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert np.isnan(result["ap"][1])  # no ground truth: left out of the mean
    assert result["map"] == pytest.approx(result["ap"][0])
    assert result["positives"] == [2, 0] and result["detections"] == [3, 0]


def _random_scene(rng, n):
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(20, 60, (n, 2))
    return torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)


def test_perfect_detector_scores_one_and_random_detector_scores_low():
    rng = np.random.default_rng(0)
    perfect, random = DetectionAP(3), DetectionAP(3)
    for _ in range(20):
        n = int(rng.integers(0, 4))  # images with no object too
        gt, gt_labels = _random_scene(rng, n), torch.tensor(rng.integers(0, 3, n))
        perfect.add(gt, torch.tensor(rng.uniform(0.5, 1, n)), gt_labels, gt, gt_labels)
        k = 5
        random.add(
            _random_scene(rng, k),
            torch.tensor(rng.uniform(0, 1, k)),
            torch.tensor(rng.integers(0, 3, k)),
            gt,
            gt_labels,
        )
    good = perfect.result()
    assert good["map"] == 1.0 and all(a == 1.0 for a in good["ap"])
    assert random.result()["map"] < 0.2


@pytest.fixture(scope="module")
def alexnet():
    torch.manual_seed(0)
    model = reinitialize(create_model("alexnet", num_classes=3), "kaiming").eval()
    return model


def test_background_class_keeps_the_object_rows(alexnet):
    model = create_model("alexnet", num_classes=3)
    model.load_state_dict(alexnet.state_dict())
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    before = model(x)
    assert add_background_class(model) == 3
    after = model(x)
    assert after.shape == (1, 4)
    torch.testing.assert_close(after[:, :3], before)


@pytest.mark.parametrize("stride", ["coarse", "fine"])
def test_training_patches_give_the_dense_map_logits(alexnet, stride):
    """The fc-form head on a gathered patch equals the conv-form map at that location, so the
    windows trained are exactly the windows scored at inference."""
    model = create_model("alexnet", num_classes=3)
    model.load_state_dict(alexnet.state_dict())
    model.eval()
    background = add_background_class(model)
    image = np.random.default_rng(1).integers(0, 256, (256, 288, 3), dtype=np.uint8)
    sample = DetectionSample("k", image, np.array([[20, 20, 250, 250]], np.float32), np.array([1]))
    x = whole_image_input(image, torch.full((3,), 120.0), 1 / 64, "cpu")
    patches, targets = training_windows(
        model,
        [x],
        [sample],
        background=background,
        scales=(256, 300),
        stride=stride,
        random_negatives=50,
        hard_negatives=0,
        generator=torch.Generator().manual_seed(0),
    )
    assert patches.shape[1:] == (256, 6, 6) and patches.shape[0] == targets.shape[0] > 2
    assert set(targets.tolist()) <= {1, background} and 1 in targets.tolist()
    with torch.no_grad():
        head = model.forward_head(patches)  # (L, 4)
        dense = score_maps(model, x.unsqueeze(0), stride)[1][0].flatten(1).T  # (h'w', 4), scale 256
    # Every patch's logits are one of the scale-256 or scale-300 dense locations' logits.
    from convplat.training.dense import rescale, scaled_size

    x300 = rescale(x, scaled_size(256, 288, 300)).unsqueeze(0)
    with torch.no_grad():
        dense300 = score_maps(model, x300, stride)[1][0].flatten(1).T
    table = torch.cat([dense, dense300])
    gaps = torch.cdist(head, table).min(dim=1).values
    assert float(gaps.max()) < 1e-3 * float(table.abs().max())


# --------------------------------------------------------------------------- regressor boxes
def window_regressor(per_class: bool) -> BoxRegressor:
    """A regressor that predicts (0, 0, 1, 1) - the whole window - at every location."""
    record = {"per_class": per_class, "hidden": (8, 4)}
    regressor = build_regressor(create_model("alexnet", num_classes=3), record)
    with torch.no_grad():
        regressor.layers[-1].weight.zero_()
    return regressor.eval()


class FixedBoxRegressor(nn.Module):
    """A stub that predicts one fixed image box at every location: its window-relative form,
    computed from the location's window (offset (dy, dx) at pooled cell (y, x) is the
    interleaved location (y·n + dy, x·n + dx), ``window_step`` pixels apart)."""

    per_class = False
    num_boxes = 1
    select = BoxRegressor.select

    def __init__(self, model, stride: str, box: list[float]) -> None:
        super().__init__()
        self.n, self.step = offset_count(model, stride), window_step(model, stride)
        self.s, self.size = model.feature_size, model.input_size
        self.box = torch.tensor(box)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        offsets, _, h, w = pooled.shape  # one image: offsets = n·n
        ys = torch.arange(h - self.s + 1).view(1, -1, 1) * self.n
        xs = torch.arange(w - self.s + 1).view(1, 1, -1) * self.n
        dy = (torch.arange(offsets) // self.n).view(-1, 1, 1)
        dx = (torch.arange(offsets) % self.n).view(-1, 1, 1)
        y0 = ((ys + dy) * self.step).float().expand(offsets, -1, xs.shape[-1])
        x0 = ((xs + dx) * self.step).float().expand(offsets, ys.shape[1], -1)
        origin = torch.stack([x0, y0, x0, y0], dim=1)  # (offsets, 4, H, W)
        return (self.box.view(1, 4, 1, 1) - origin) / self.size


def _detector(alexnet):
    model = create_model("alexnet", num_classes=3)
    model.load_state_dict(alexnet.state_dict())
    model.eval()
    return model, add_background_class(model)


@pytest.mark.parametrize(("per_class", "stride"), [(False, "coarse"), (True, "fine")])
def test_window_predicting_regressor_gives_the_window_detections(alexnet, per_class, stride):
    model, background = _detector(alexnet)
    image = np.random.default_rng(2).integers(0, 256, (256, 288, 3), dtype=np.uint8)
    x = whole_image_input(image, torch.full((3,), 120.0), 1 / 64, "cpu")
    settings = {"background": background, "scales": (256, 300), "stride": stride}
    settings["score_threshold"] = 0.0  # every location proposes a box
    plain = detect_image(model, x, **settings)
    regressed = detect_image(model, x, **settings, regressor=window_regressor(per_class))
    assert plain[0].shape[0] > 1
    for a, b in zip(plain, regressed, strict=True):
        assert torch.equal(a, b)


def test_fixed_box_regressor_moves_every_detection_to_that_box(alexnet):
    model, background = _detector(alexnet)
    image = np.random.default_rng(3).integers(0, 256, (256, 288, 3), dtype=np.uint8)
    x = whole_image_input(image, torch.full((3,), 120.0), 1 / 64, "cpu")
    box = [37.0, 51.0, 201.0, 180.0]  # scale 256 of a 256-high image: scaled pixels = pixels
    settings = {"background": background, "scales": (256,), "score_threshold": 0.0}
    plain = detect_image(model, x, stride="fine", **settings)
    stub = FixedBoxRegressor(model, "fine", box)
    boxes, scores, labels = detect_image(model, x, stride="fine", regressor=stub, **settings)
    # One merged box per class, all of them the stub's box; the windows were elsewhere.
    assert len(set(labels.tolist())) == len(labels) >= 1
    torch.testing.assert_close(boxes, torch.tensor([box]).expand_as(boxes), atol=1e-3, rtol=0)
    assert float(scores.sum()) == pytest.approx(float(plain[1].sum()), rel=1e-4)
    assert not torch.allclose(plain[0], torch.tensor([box]).expand_as(plain[0]))


def test_regressor_boxes_reuse_the_class_maps_conv_pass(alexnet):
    """detect runs the conv layers once per scale: the regressor applied to ``score_maps``'
    pooled maps gives exactly the boxes of ``run_scale``, which runs its own conv pass."""
    from convplat.localize.detect_eval import regressed_boxes
    from convplat.localize.detection_data import to_frame
    from convplat.localize.multiscale import run_scale
    from convplat.localize.regressor import to_image_boxes
    from convplat.training.dense import rescale, scaled_size

    model, background = _detector(alexnet)
    torch.manual_seed(4)
    regressor = build_regressor(
        create_model("alexnet", num_classes=3), {"per_class": True, "hidden": (8, 4)}
    ).eval()
    image = np.random.default_rng(4).integers(0, 256, (256, 288, 3), dtype=np.uint8)
    x = whole_image_input(image, torch.full((3,), 120.0), 1 / 64, "cpu")
    size = scaled_size(256, 288, 300)
    with torch.no_grad():
        pooled, logits = score_maps(model, rescale(x, size).unsqueeze(0), "fine")
        labels = logits[0, :background].flatten(1).argmax(dim=0)
        shape = tuple(logits.shape[-2:])
        ours = regressed_boxes(
            model, regressor, pooled, (size[0] / 256, size[1] / 288), "fine", labels, shape
        )
        out = run_scale(model, regressor, x.unsqueeze(0), 300, "fine")
        per_location = out.boxes[0].flatten(1).T[..., None, None]
        relative = regressor.select(per_location, labels)[..., 0, 0].float()
        pixels = to_image_boxes(relative, out.windows, model.input_size)
        reference = to_frame(pixels, (out.factor[1], out.factor[0]))
    assert ours.shape == (shape[0] * shape[1], 4) and ours.std() > 0
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)


def test_regressor_that_does_not_fit_is_a_one_line_config_error(tmp_path):
    from convplat.errors import ConfigError
    from convplat.localize.detect_eval import load_detection_regressor
    from convplat.storage import resolve

    run = resolve(str(tmp_path / "cls")).uri
    config = {"run": run, "weights": "final", "model": "alexnet", "background": 3}
    record = {"run": run, "weights": "final", "model": "alexnet", "num_classes": 3}
    record |= {"per_class": False, "hidden": [8, 4]}
    localize = tmp_path / "localize"
    localize.mkdir()
    (localize / "regressor.safetensors").write_bytes(state_dict_bytes(window_regressor(False)))
    for changes in ({"hidden": [16, 4]}, {"per_class": True}, {"model": "zfnet"}, {}):
        (localize / "config.json").write_text(json.dumps(record | changes))
        if not changes:
            regressor, used = load_detection_regressor(config, str(localize))
            assert isinstance(regressor, BoxRegressor) and used.startswith("regressor:")
            continue
        with pytest.raises(ConfigError) as error:
            load_detection_regressor(config, str(localize))
        assert "\n" not in str(error.value) and str(error.value).startswith("--regressor")
    assert load_detection_regressor(config, None) == (None, "windows")
    assert load_detection_regressor(config, "auto") == (None, "windows")  # no cls/localize
    (localize / "config.json").write_text('{"run": ')  # damaged: was a JSONDecodeError
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        load_detection_regressor(config, str(localize))


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory, ray_session):
    from convplat.config import PrepareConfig
    from convplat.demo import make_demo_data
    from convplat.pipeline import prepare

    root = tmp_path_factory.mktemp("demo")
    make_demo_data(
        out=root,
        classes=3,
        train_per_class=4,
        val_per_class=2,
        caltech_classes=2,
        caltech_per_class=1,
        objects_per_image=3,
    )
    shards = tmp_path_factory.mktemp("shards")
    prepare(
        PrepareConfig(source=str(root / "imagenet"), out=str(shards), shard_size=6, progress=False)
    )
    return shards


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, demo_shards, alexnet):
    """A classification run directory as `convplat train` leaves it (random weights)."""
    run = tmp_path_factory.mktemp("runs") / "alexnet-demo"
    run.mkdir()
    (run / "model.safetensors").write_bytes(state_dict_bytes(alexnet))
    config = {
        "model": "alexnet",
        "num_classes": 3,
        "data": str(demo_shards),
        "input_scale": 1 / 64,
        "classes": ["a", "b", "c"],
    }
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_demo_objects_per_image_survive_prepare(demo_shards):
    """`--objects-per-image` reaches the shards: several boxes with their own labels."""
    metas = []
    for tar in sorted(Path(demo_shards).glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".json"):
                    metas.append(json.loads(archive.extractfile(member).read()))
    assert len(metas) == 3 * (4 + 2)
    assert all(len(m["boxes"]) == len(m["box_labels"]) >= 1 for m in metas)
    assert any(len(m["boxes"]) > 1 for m in metas)
    assert len({label for m in metas for label in m["box_labels"]}) == 3
    # The image's class is its first (largest) object's; the centre crop rarely cuts it away.
    assert sum(m["label"] in m["box_labels"] for m in metas) >= 0.8 * len(metas)
    for m in metas:
        for x0, y0, x1, y1 in m["boxes"]:
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256


def test_detect_train_and_eval_through_the_cli(source_run, demo_shards, tmp_path, capsys):
    out = tmp_path / "runs"
    args = "--run-name det --scales 256,320 --epochs 1 --batch-size 2 --limit-train-batches 2"
    args += " --workers 2 --stride fine"  # two ranks: DDP and the all-reduced metrics
    assert main(["detect", "train", str(source_run), "--out", str(out), *args.split()]) == 0
    run = out / "det"
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "detect" and config["num_classes"] == 4 and config["background"] == 3
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["images"] == 4 and metrics[0]["windows"] > 0
    assert np.isfinite(metrics[0]["train_loss"])
    assert (run / "model.safetensors").is_file()
    assert (run / "checkpoints" / "latest").read_text().strip() == "epoch-001"
    capsys.readouterr()

    # threshold 0: every image has boxes; no <source>/localize yet, so "auto" uses windows
    args = "--score-threshold 0.0 --limit 4 --scales 256 --regressor auto"
    assert main(["detect", "eval", str(run), *args.split()]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed
    result = json.loads((run / "detect-eval-val.json").read_text())
    assert result["boxes"] == "windows"
    assert result["images"] == 4 and len(result["per_class"]) == 3
    assert result["map"] is not None and 0.0 <= result["map"] <= 1.0
    assert sum(row["positives"] for row in result["per_class"]) >= 4
    assert sum(row["detections"] for row in result["per_class"]) >= 4
    assert (run / "plots" / "detections-val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A localization dir whose regressor predicts the windows: the same detections, recorded.
    localize = tmp_path / "localize"
    localize.mkdir()
    record = {"run": config["run"], "weights": "final", "model": "alexnet", "num_classes": 3}
    record |= {"per_class": True, "hidden": [8, 4], "scales": [256], "stride": "fine"}
    (localize / "config.json").write_text(json.dumps(record))
    regressor = window_regressor(per_class=True)
    (localize / "regressor.safetensors").write_bytes(state_dict_bytes(regressor))
    args += f" --regressor {localize}"
    assert main(["detect", "eval", str(run), *args.split()]) == 0
    regressed = json.loads((run / "detect-eval-val.json").read_text())
    assert regressed["boxes"] == f"regressor:{localize}"
    assert regressed["per_class"] == result["per_class"] and regressed["map"] == result["map"]
    # Mistakes are one-line errors: no trained regressor there; one from another run.
    capsys.readouterr()
    assert main(["detect", "eval", str(run), "--regressor", str(tmp_path / "none")]) == 2
    record["run"] = str(tmp_path / "other-run")
    (localize / "config.json").write_text(json.dumps(record))
    assert main(["detect", "eval", str(run), "--regressor", str(localize)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("convplat: error: --regressor") for e in errors)


@pytest.mark.parametrize(
    "args",
    [
        ("detect", "eval", "{source}"),  # a classification run is not a detection run
        ("detect", "train", "{source}", "--scales", "big"),
        ("detect", "train", "{source}", "--stride", "medium"),
        ("detect", "train", "{source}", "--loader-workers", "-2"),
        ("detect", "train", "{missing}"),
        ("detect", "train", "{source}", "--out", "{tmp}", "--run-name", "taken"),
        ("detect", "train", "{source}", "--out", "{tmp}", "--gpus", "1"),
        # too small for the conv layers: failed in the Ray workers after the run dir was made
        ("detect", "train", "{source}", "--out", "{tmp}", "--scales", "50", "--batch-size", "2"),
    ],
)
def test_detect_user_mistakes_exit_2(args, source_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    argv = [a.format(source=source_run, missing=tmp_path / "none", tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convplat: error:") and "\n" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # nothing written
    assert list((tmp_path / "taken").iterdir()) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"scales": ()},
        {"stride": "medium"},
        {"trainable": "all"},
        {"positive_iou": 0.2, "negative_iou": 0.3},
        {"batch_size": 3, "workers": 2},
        # checked before Ray starts, as `train` does (these failed in the workers, or trained)
        {"lr": float("inf")},
        {"momentum": -1.0},
        {"weight_decay": -1.0},
        {"seed": -1},
        {"cpus_per_worker": -1},
        {"max_failures": -5},
    ],
)
def test_detect_config_rejects_bad_values(changes):
    from convplat.errors import ConfigError

    with pytest.raises(ConfigError):
        DetectConfig(run="r", **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": float("inf")}, "--lr: expected a finite value > 0"),
        ({"seed": -1}, "--seed: expected >= 0"),
        ({"limit_train_batches": -1}, "--limit-train-batches: expected >= 0"),
        ({"limit_val_batches": -1}, "--limit-val-batches: expected >= 0"),
        ({"hidden": (32,)}, "--hidden: expected two widths"),
    ],
)
def test_localize_config_rejects_bad_values(changes, message):
    from convplat.config.localize import LocalizeConfig
    from convplat.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        LocalizeConfig(run="r", **changes)
