"""PASCAL VOC 2012 transfer (ZFNet Table 6): the reader, the demo tree, VOC-style average
precision, multi-label heads and `convplat transfer voc2012` end to end on tiny data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import jpeg_bytes
from safetensors.torch import load as load_safetensors

from convplat.demo import make_demo_data, voc_class_specs
from convplat.errors import ConfigError, DatasetError
from convplat.metrics import average_precision
from convplat.pipeline.readers import VOC_CLASSES, read_voc
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.models import create_model
from convplat.transfer import TransferConfig, format_table, transfer
from convplat.transfer.heads import fit_multilabel_head, multilabel_loss, predict_scores
from convplat.transfer.protocol import class_average_precisions

# --- a hand-written VOC tree ------------------------------------------------------------------


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def voc_xml(objects: list[tuple[str, int]]) -> str:
    """An annotation with (class name, difficult) objects."""
    body = "".join(
        f"<object><name>{name}</name><difficult>{hard}</difficult><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        for name, hard in objects
    )
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


# image id -> (split, objects); 2012_000003 holds a dog only as a difficult object.
TREE = {
    "2012_000001": ("train", [("dog", 0), ("person", 0)]),
    "2012_000002": ("train", [("cat", 0)]),
    "2012_000003": ("val", [("dog", 1), ("cat", 0)]),
    "2012_000004": ("val", [("person", 0), ("person", 1)]),
    "2012_000005": ("val", [("dog", 0)]),  # its JPEG is missing
}


def make_voc_tree(root: Path, class_files: bool = True) -> Path:
    """``VOCdevkit/VOC2012`` with the devkit's lists; per-class labels derived like the devkit."""
    base = root / "VOCdevkit" / "VOC2012"
    main = base / "ImageSets" / "Main"
    for n, (image_id, (_, objects)) in enumerate(TREE.items()):
        if image_id != "2012_000005":
            write(base / "JPEGImages" / f"{image_id}.jpg", jpeg_bytes(60, 40, seed=n))
        write(base / "Annotations" / f"{image_id}.xml", voc_xml(objects))
    for split in ("train", "val"):
        ids = [i for i, (s, _) in TREE.items() if s == split]
        write(main / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        if not class_files:
            continue
        for cls in VOC_CLASSES:
            lines = []
            for i in ids:
                flags = [hard for name, hard in TREE[i][1] if name == cls]
                label = -1 if not flags else (1 if 0 in flags else 0)
                lines.append(f"{i} {label:2d}\n")
            write(main / f"{cls}_{split}.txt", "".join(lines))
    return root


def targets_by_id(listing) -> dict[str, dict[str, int]]:
    return {
        Path(item.path).stem: {c: t[k] for k, c in enumerate(VOC_CLASSES) if t[k] != -1}
        for item, t in zip(listing.items, listing.targets, strict=True)
    }


EXPECTED = {
    "2012_000001": {"dog": 1, "person": 1},
    "2012_000002": {"cat": 1},
    "2012_000003": {"dog": 0, "cat": 1},
    "2012_000004": {"person": 1},
}


@pytest.mark.parametrize("class_files", [True, False])
def test_reader_labels_difficult_and_multi_label(tmp_path: Path, class_files: bool):
    root = make_voc_tree(tmp_path, class_files=class_files)
    listing = read_voc(root)  # found two levels down, under VOCdevkit/VOC2012
    assert listing.layout == "voc2012" and [c.name for c in listing.classes] == list(VOC_CLASSES)
    assert targets_by_id(listing) == EXPECTED  # the same from class files or from the XML
    assert listing.split_counts() == {"train": 2, "val": 2}
    assert [Path(p).name for p, _ in listing.skipped] == ["2012_000005.jpg"]
    assert listing.skipped[0][1] == "missing image file"
    first = {Path(it.path).stem: it.label for it in listing.items}
    assert first["2012_000001"] == VOC_CLASSES.index("dog")
    assert all(len(t) == 20 for t in listing.targets)


def test_class_file_wins_over_xml_and_missing_lines_fall_back(tmp_path: Path):
    root = make_voc_tree(tmp_path)
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    # The devkit's files are the ground truth: a label there overrides the XML.
    (main / "cat_train.txt").write_text("2012_000001  1\n2012_000002 -1\n")
    # An image missing from a class file is labelled from its annotation.
    (main / "person_val.txt").write_text("2012_000003 -1\n")
    got = targets_by_id(read_voc(root / "VOCdevkit" / "VOC2012"))
    assert got["2012_000001"] == {"dog": 1, "person": 1, "cat": 1}
    assert got["2012_000002"] == {}
    assert got["2012_000004"] == {"person": 1}


def test_reader_errors_are_one_line(tmp_path: Path):
    root = make_voc_tree(tmp_path)
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    (main / "dog_val.txt").write_text("2012_000003 2\n")
    with pytest.raises(DatasetError, match=r"dog_val.txt:1: expected '<image id> <1\|0\|-1>'"):
        read_voc(root)
    with pytest.raises(DatasetError, match="not a PASCAL VOC 2012 tree"):
        read_voc(tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets")
    with pytest.raises(DatasetError, match="does not exist"):
        read_voc(tmp_path / "nope")
    for f in main.glob("*_val.txt"):
        f.unlink()
    (main / "val.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing .*val.txt"):
        read_voc(root)


# --- the demo tree ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vocdemo")
    make_demo_data(
        out,
        classes=2,
        train_per_class=1,
        val_per_class=1,
        caltech_classes=2,
        caltech_per_class=2,
        voc_classes=4,
        voc_train=24,
        voc_val=24,
    )
    return out


def test_demo_voc_tree_matches_its_annotations(demo: Path, tmp_path: Path):
    base = demo / "VOCdevkit" / "VOC2012"
    main = base / "ImageSets" / "Main"
    for cls in VOC_CLASSES:  # all 20 real class files, absent classes all -1
        for split in ("train", "val", "trainval"):
            assert (main / f"{cls}_{split}.txt").is_file()
    assert set((main / "sofa_val.txt").read_text().split()[1::2]) == {"-1"}
    listing = read_voc(base)
    targets = np.array(listing.targets)
    assert listing.split_counts() == {"train": 24, "val": 24} and not listing.skipped
    assert (targets[:, 4:] == -1).all() and (targets[:, :4] == 1).any(0).all()
    assert ((targets == 1).sum(1) > 1).any()  # multi-label images
    # Labels from the class files equal those derived from the XML (difficult flags included).
    copy = shutil.copytree(base, tmp_path / "VOC2012")
    for f in (copy / "ImageSets" / "Main").glob("*_*.txt"):
        f.unlink()
    assert read_voc(copy).targets == listing.targets
    assert "<difficult>1</difficult>" in "".join(
        p.read_text() for p in (base / "Annotations").glob("*.xml")
    )
    assert [s.wnid for s in voc_class_specs(4)] == list(VOC_CLASSES[:4])


# --- average precision, the VOC way ------------------------------------------------------------


def devkit_ap(scores: np.ndarray, gt: np.ndarray) -> float:
    """VOCevalcls.m transcribed: 0-labelled images stay in the ranking but count as neither
    true nor false positives; VOCap's envelope area."""
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(gt[order] > 0)
    fp = np.cumsum(gt[order] < 0)
    rec = tp / (gt > 0).sum()
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)
    prec = np.nan_to_num(prec)
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def test_ap_small_case_by_hand():
    # Ranked: +, -, +, 0 (difficult), -, + ; three positives.
    scores = np.array([[0.9], [0.8], [0.7], [0.65], [0.6], [0.5]])
    targets = np.array([[1], [-1], [1], [0], [-1], [1]])
    # Precision at each recall step: 1/1, 2/3, 3/5 -> envelope area (1 + 2/3 + 3/5) / 3.
    expected = (1 + 2 / 3 + 3 / 5) / 3
    assert class_average_precisions(scores, targets)[0] == pytest.approx(expected)
    # Counting the difficult image as a negative would lower it: it is really ignored.
    as_negative = average_precision(scores[:, 0], targets[:, 0] == 1, 3, method="area")
    assert as_negative == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)


def test_ap_matches_the_devkit_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, c = int(rng.integers(5, 40)), 3
        targets = rng.choice([-1, 0, 1], size=(n, c), p=[0.6, 0.1, 0.3])
        targets[0] = 1  # at least one positive per class
        scores = np.round(rng.random((n, c)) + 0.5 * (targets == 1), 2)  # ties included
        got = class_average_precisions(scores, targets)
        for k in range(c):
            assert got[k] == pytest.approx(devkit_ap(scores[:, k], targets[:, k]))
    no_positive = class_average_precisions(np.zeros((3, 1)), np.array([[-1], [0], [-1]]))
    assert np.isnan(no_positive[0])


# --- multi-label heads -------------------------------------------------------------------------


def test_multilabel_losses_match_a_direct_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    targets = torch.tensor([[1, 0, -1], [1, 1, -1]], dtype=torch.int8)
    p = torch.sigmoid(logits)
    sig = -(torch.log(p[0, 0]) + torch.log(1 - p[0, 2]))  # the 0 entry is left out
    sig = sig - (torch.log(p[1, 0]) + torch.log(p[1, 1]) + torch.log(1 - p[1, 2]))
    assert multilabel_loss(logits, targets, "sigmoid") == pytest.approx(float(sig) / 2)
    q = torch.log_softmax(logits, 1)
    soft = -(q[0, 0] + 0.5 * (q[1, 0] + q[1, 1])) / 2
    assert multilabel_loss(logits, targets, "softmax") == pytest.approx(float(soft))


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_multilabel_head_learns_separable_labels(kind: str):
    rng = np.random.default_rng(0)
    c, dim, n = 4, 32, 160
    present = rng.random((n, c)) < 0.35
    present[np.arange(n), rng.integers(0, c, n)] = True  # every image holds something
    directions = rng.normal(0, 2, (c, dim))
    x = np.maximum(present @ directions + rng.normal(0, 0.5, (n, dim)), 0).astype(np.float32)
    targets = np.where(present, 1, -1).astype(np.int8)
    targets[rng.random((n, c)) < 0.05] = 0  # a few "difficult" labels
    fit = fit_multilabel_head(x[:100], targets[:100], kind=kind, weight_decays=(0.01, 1.0))
    assert set(fit.scores) == {0.01, 1.0} and fit.weight_decay in (0.01, 1.0)
    ap = class_average_precisions(predict_scores(fit.linear, x[100:], kind).numpy(), targets[100:])
    assert np.nanmean(ap) > 0.9


# --- end to end ---------------------------------------------------------------------------------


def make_run(root: Path) -> Path:
    """A hand-made AlexNet run (config.json, model.safetensors, stats.npz), as test_transfer's."""
    shards = root / "shards"
    shards.mkdir(parents=True)
    np.savez(
        shards / "stats.npz",
        mean=np.full((256, 256, 3), 120, np.float32),
        rgb_mean=np.full(3, 120, np.float32),
        eigval=np.ones(3, np.float32),
        eigvec=np.eye(3, dtype=np.float32),
    )
    torch.manual_seed(0)
    run = root / "runs" / "alexnet-test"
    run.mkdir(parents=True)
    config = {"model": "alexnet", "num_classes": 3, "data": str(shards), "input_scale": 1 / 64}
    (run / "config.json").write_text(json.dumps(config))
    model = create_model("alexnet", num_classes=3)
    (run / "model.safetensors").write_bytes(state_dict_bytes(model))
    return run


def test_config_for_voc2012():
    cfg = TransferConfig(dataset="voc2012")
    assert cfg.root == "data/VOCdevkit/VOC2012" and cfg.train_per_class == ()
    with pytest.raises(ConfigError, match="--train-per-class: expected none with voc2012"):
        TransferConfig(dataset="voc2012", train_per_class="15")
    with pytest.raises(ConfigError, match="--voc-loss"):
        TransferConfig(dataset="voc2012", voc_loss="hinge")
    with pytest.raises(ConfigError, match="--head-optimizer"):
        TransferConfig(dataset="voc2012", head_optimizer="sgd")


def test_transfer_voc2012_end_to_end(demo: Path, tmp_path: Path, capsys):
    from convplat.cli.main import main

    make_run(tmp_path)
    data = demo / "VOCdevkit" / "VOC2012"
    args = ["transfer", "voc2012", "--data", str(data), "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "out"), "--mode", "head,scratch", "--epochs", "1",
            "--batch-size", "24", "--weight-decays", "0.1,1", "--head-iters", "50"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "average precision % on val" in out and "head (fc7)" in out and "scratch" in out
    assert "aeroplane" in out and "tvmonitor" in out and "\nmean " in out
    run = Path(out.strip().splitlines()[-1].split("results written to ")[1])
    results = json.loads((run / "results.json").read_text())
    assert results["split_images"] == {"train": 24, "val": 24}
    assert results["classes"] == list(VOC_CLASSES)
    head, scratch = results["settings"]
    assert [head["label"], scratch["label"]] == ["head (fc7)", "scratch"]
    for s in (head, scratch):
        assert len(s["per_class"]) == 20 and s["classes_scored"] == 4
        assert all(v is None for v in s["per_class"][4:])  # absent classes: no AP
        assert s["mean"] == pytest.approx(np.mean(s["per_class"][:4]), abs=1e-4)
    # The stored per-class AP equals a direct VOC computation on the head's val scores.
    weights = load_safetensors((run / "head.safetensors").read_bytes())
    assert weights["fc7.weight"].shape == (20, 4096) and weights["fc7.bias"].shape == (20,)
    assert (run / "ap-head-fc7.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "ap-scratch.png").is_file()
    assert sum(results["positives"]["val"]) > 24 and sum(results["difficult"]["val"]) > 0
    assert "average precision" in format_table(results)

    # A second head-only run reuses the cached features; a missing tree is one line, exit 2.
    again = transfer(
        TransferConfig(
            dataset="voc2012",
            data=str(data),
            runs=str(tmp_path / "runs"),
            out=str(tmp_path / "out"),
            weight_decays=(0.1, 1.0),
            head_iters=50,
            progress=False,
        )
    )
    assert again["features"]["cache"]["fc7"]["reused"] is True
    assert again["settings"][0]["per_class"] == head["per_class"]
    assert main(["transfer", "voc2012", "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
