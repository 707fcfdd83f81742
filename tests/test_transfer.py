"""`convplat transfer`: Caltech trees, ZFNet's split protocol, frozen features and their cache,
softmax heads, and the library call end to end on tiny generated data."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch
from conftest import jpeg_bytes, photo
from PIL import Image
from safetensors.torch import load as load_safetensors

from convplat.errors import ConfigError, ConvplatError, DatasetError
from convplat.pipeline.readers import read_dataset
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.models import create_model
from convplat.transfer import (
    FeatureExtractor,
    TransferConfig,
    TransferNet,
    fit_head,
    format_table,
    frozen_extractor,
    load_checkpoint,
    make_splits,
    mean_class_accuracy,
    transfer,
)
from convplat.transfer.extract import decode_files, decode_pixels, make_transform
from convplat.transfer.finetune import pretrained_model, train_network
from convplat.transfer.gather import gather
from convplat.transfer.heads import predict_proba, standardizer, train_softmax
from convplat.transfer.protocol import confusion_matrix, holdout_split

COLOURS = [(200, 40, 40), (40, 180, 60), (50, 70, 210), (220, 200, 40)]


# --- helpers ----------------------------------------------------------------------------------


def class_jpeg(label: int, seed: int, size=(120, 96), mode: str = "RGB") -> bytes:
    """A photo-like image tinted with its class's colour: linearly separable for any net."""
    w, h = size
    base = photo(w, h, seed).astype(np.float32)
    tint = np.array(COLOURS[label % len(COLOURS)], np.float32)
    pixels = (0.4 * base + 0.6 * tint).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def make_caltech101(root: Path, counts=(8, 6, 4), quirks: bool = True) -> Path:
    """``101_ObjectCategories`` with uneven classes, a background class and archive quirks."""
    cats = root / "101_ObjectCategories"
    names = ["accordion", "airplanes", "anchor", "ant"][: len(counts)]
    for c, (name, n) in enumerate(zip(names, counts, strict=True)):
        for i in range(n):
            mode = "L" if quirks and c == 0 and i == 0 else "RGB"  # grayscale JPEG
            write(cats / name / f"image_{i + 1:04d}.jpg", class_jpeg(c, 100 * c + i, mode=mode))
    write(cats / "BACKGROUND_Google" / "image_0001.jpg", class_jpeg(0, 999))
    if quirks:
        write(cats / "BACKGROUND_Google" / "tmp", "stray")  # as in the real archive
        write(cats / names[1] / "notes.txt", "stray")
        write(cats / names[1] / "broken.jpg", b"\xff\xd8 truncated")  # listed, then rejected
        (cats / names[-1] / "nested").mkdir()
    return root


def make_caltech256(root: Path, counts=(5, 3)) -> Path:
    """``256_ObjectCategories`` with clutter, ``056.dog/greg`` and ``198.spider/RENAME2``."""
    cats = root / "256_ObjectCategories"
    dirs = ["056.dog", "198.spider", "201.starfish-101"][: len(counts)]
    for c, (d, n) in enumerate(zip(dirs, counts, strict=True)):
        for i in range(n):
            num = d.split(".")[0]
            mode = "L" if i == 1 else "RGB"
            write(cats / d / f"{num}_{i + 1:04d}.jpg", class_jpeg(c, 50 * c + i, mode=mode))
    write(cats / "257.clutter" / "257_0001.jpg", class_jpeg(0, 7))
    (cats / "056.dog" / "greg").mkdir(parents=True)
    write(cats / "056.dog" / "greg" / "x.jpg", class_jpeg(0, 8))
    write(cats / "198.spider" / "RENAME2", "stray")
    return root


def make_run(root: Path, name: str = "alexnet-test", seed: int = 0) -> Path:
    """A run directory like `convplat train` writes, by hand: config.json, model.safetensors
    and a shards folder with only stats.npz (the mean image)."""
    shards = root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(
        shards / "stats.npz",
        mean=(120 + 10 * rng.random((256, 256, 3))).astype(np.float32),
        rgb_mean=np.array([120.0, 121.0, 122.0], np.float32),
        eigval=np.array([2000.0, 1700.0, 1500.0], np.float32),
        eigvec=np.eye(3, dtype=np.float32),
        count=np.array(10),
    )
    torch.manual_seed(seed)
    model = create_model("alexnet", num_classes=3)
    run = root / "runs" / name
    run.mkdir(parents=True)
    config = {"model": "alexnet", "num_classes": 3, "data": str(shards), "input_scale": 1 / 64}
    (run / "config.json").write_text(json.dumps(config))
    (run / "model.safetensors").write_bytes(state_dict_bytes(model))
    return run


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """One tiny Caltech-101 tree and one hand-made AlexNet run, shared by the module."""
    root = tmp_path_factory.mktemp("transfer")
    make_caltech101(root / "data" / "caltech101")
    make_run(root)
    return root


def listing_and_checkpoint(ws: Path):
    listing = read_dataset(ws / "data" / "caltech101", "caltech101")
    checkpoint = load_checkpoint(None, str(ws / "runs"))
    mean = np.load(Path(checkpoint.data) / "stats.npz")["mean"]
    return listing, checkpoint, mean


# --- configuration and errors -------------------------------------------------------------------


def test_config_parses_lists_and_resolves_paper_defaults():
    cfg = TransferConfig(dataset="caltech256", modes="head,scratch", cuts="fc7, conv5")
    assert cfg.modes == ("head", "scratch") and cfg.cuts == ("fc7", "conv5")
    assert cfg.train_per_class == (15, 30, 45, 60)
    assert TransferConfig().train_per_class == (15, 30)
    assert TransferConfig(train_per_class="5,10").train_per_class == (5, 10)
    folder = TransferConfig(dataset="folder:/x/my set")
    assert folder.dataset_kind == "folder" and folder.root == "/x/my set"
    assert folder.dataset_slug == "folder-my_set"


@pytest.mark.parametrize(
    "changes, flag",
    [
        (
            {"dataset": "caltech102"},
            "DATASET: expected caltech101, caltech256, voc2012 or folder:PATH",
        ),
        ({"modes": "head,finetune"}, "--mode: expected"),
        ({"cuts": "fc8"}, "--cut: expected"),
        ({"train_per_class": "15,x"}, "--train-per-class: expected"),
        ({"train_per_class": (0,)}, "--train-per-class: expected"),
        ({"splits": 0}, "--splits: expected >= 1, got 0"),
        ({"augment": "crops"}, "--augment: expected"),
        ({"weight_decays": (-1.0,)}, "--weight-decays: expected"),
        ({"dataset": "folder:/x", "data": "/y"}, "--data: expected no --data"),
        ({"modes": "head,head"}, "--mode: expected distinct"),
    ],
)
def test_config_errors_name_the_flag(changes, flag):
    with pytest.raises(ConfigError, match=flag.replace("(", r"\(")):
        TransferConfig(**changes)


def test_missing_dataset_and_missing_run_are_one_line_errors(tmp_path: Path, workspace: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        transfer(
            TransferConfig(
                data=str(tmp_path / "nope"), runs=str(workspace / "runs"), progress=False
            )
        )
    with pytest.raises(ConvplatError, match="no trained run"):
        transfer(
            TransferConfig(
                data=str(workspace / "data" / "caltech101"),
                runs=str(tmp_path / "empty-runs"),
                progress=False,
            )
        )
    with pytest.raises(ConvplatError, match="--checkpoint"):
        load_checkpoint(str(tmp_path / "missing"), "runs")


def test_checkpoint_is_a_run_dir_or_a_weights_file_inside_one(workspace: Path):
    newest = load_checkpoint(None, str(workspace / "runs"))
    by_dir = load_checkpoint(str(workspace / "runs" / "alexnet-test"))
    by_file = load_checkpoint(str(workspace / "runs" / "alexnet-test" / "model.safetensors"))
    assert newest.sha256 == by_dir.sha256 == by_file.sha256
    assert by_file.run_dir == by_dir.run_dir and by_file.model == "alexnet"
    assert by_file.input_size == 224 and by_file.input_scale == pytest.approx(1 / 64)


# --- readers and decoding -----------------------------------------------------------------------


def test_caltech101_tree_uneven_grayscale_and_strays(tmp_path: Path):
    root = make_caltech101(tmp_path / "c101")
    listing = read_dataset(root, "caltech101")
    assert [c.name for c in listing.classes] == ["accordion", "airplanes", "anchor"]
    counts = np.bincount([it.label for it in listing.items])
    assert counts.tolist() == [8, 7, 4]  # airplanes' broken.jpg is listed, rejected on decode
    skipped = {Path(p).name: reason for p, reason in listing.skipped}
    assert "notes.txt" in skipped and "nested" in skipped
    assert "tmp" not in skipped  # the whole background class is left out
    jpegs, reasons = decode_files([it.path for it in listing.items])
    rejected = [Path(listing.items[i].path).name for i, r in enumerate(reasons) if r]
    assert rejected == ["broken.jpg"]
    pixels = decode_pixels([j for j in jpegs if j is not None])
    assert pixels.shape == (18, 256, 256, 3) and pixels.dtype == np.uint8  # grayscale -> RGB


def test_caltech256_tree_excludes_clutter_and_strays(tmp_path: Path):
    root = make_caltech256(tmp_path / "c256")
    listing = read_dataset(root, "caltech256")
    assert [c.wnid for c in listing.classes] == ["056.dog", "198.spider"]
    assert [c.name for c in listing.classes] == ["dog", "spider"]
    assert np.bincount([it.label for it in listing.items]).tolist() == [5, 3]
    skipped = {Path(p).name: reason for p, reason in listing.skipped}
    assert skipped["greg"] == "unexpected directory"
    assert skipped["RENAME2"] == "not an image file name"
    with_background = read_dataset(root, "caltech256", include_background=True)
    assert "257.clutter" in [c.wnid for c in with_background.classes]


# --- the split protocol and the metric ------------------------------------------------------


def test_splits_are_disjoint_seeded_and_sized_as_asked():
    labels = np.repeat(np.arange(4), [40, 25, 10, 1])  # class 2 small, class 3 unusable
    splits = make_splits(labels, 4, train_per_class=15, test_per_class=20, splits=5, seed=3)
    assert len(splits) == 5
    for s in splits:
        assert not set(s.train) & set(s.test)
        train_counts = np.bincount(labels[s.train], minlength=4)
        test_counts = np.bincount(labels[s.test], minlength=4)
        assert train_counts.tolist() == [15, 15, 9, 0]
        assert test_counts.tolist() == [20, 10, 1, 0]  # up to 20, what is left, at least 1
        assert s.short == [
            {"class": 2, "images": 10, "train": 9, "test": 1},
            {"class": 3, "images": 1, "train": 0, "test": 0},
        ]
    again = make_splits(labels, 4, 15, 20, 5, seed=3)
    assert all(
        np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
        for a, b in zip(splits, again, strict=True)
    )
    assert not np.array_equal(splits[0].train, splits[1].train)  # splits differ from each other
    other = make_splits(labels, 4, 15, 20, 5, seed=4)
    assert not np.array_equal(splits[0].train, other[0].train)


def test_holdout_is_stratified_and_keeps_a_fit_image():
    labels = np.repeat(np.arange(3), [10, 2, 1])
    fit, held = holdout_split(labels, 0.2, np.random.default_rng(0))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]
    assert np.bincount(labels[fit], minlength=3).tolist() == [8, 1, 1]
    assert not set(fit) & set(held)


def test_mean_class_accuracy_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    predictions = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 5, 300))
    mean, per_class = mean_class_accuracy(predictions, labels, num_classes=6)
    direct = [np.mean(predictions[labels == c] == c) for c in range(5)]
    assert np.allclose(per_class[:5], direct) and np.isnan(per_class[5])
    assert mean == pytest.approx(np.mean(direct))
    assert mean != pytest.approx(np.mean(predictions == labels))  # not overall accuracy
    matrix = confusion_matrix(predictions, labels, 6)
    assert matrix.sum() == 300 and np.allclose(np.diag(matrix)[:5] / matrix.sum(1)[:5], direct)


# --- heads ------------------------------------------------------------------------------------


def blobs(n_per_class: int, classes: int = 4, dim: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + rng.normal(0, 1, (len(labels), dim))
    return np.maximum(features, 0).astype(np.float32), labels  # ReLU-like, as fc7 is


@pytest.mark.parametrize("optimizer", ["lbfgs", "sgd"])
def test_head_learns_linearly_separable_features(optimizer: str):
    x_all, y_all = blobs(50)
    train = np.concatenate([np.arange(c * 50, c * 50 + 20) for c in range(4)])
    test = np.setdiff1d(np.arange(200), train)
    fit = fit_head(x_all[train], y_all[train], 4, optimizer=optimizer, iters=100)
    predictions = predict_proba(fit.linear, x_all[test]).argmax(1).numpy()
    accuracy, _ = mean_class_accuracy(predictions, y_all[test], 4)
    assert accuracy >= 0.95
    assert fit.weight_decay in (1e-3, 1e-2, 1e-1, 1.0) and len(fit.scores) == 4


def test_folded_head_equals_the_standardised_one():
    x, y = blobs(10)
    xt = torch.from_numpy(x)
    mean, std = standardizer(xt)
    head = train_softmax((xt - mean) / std, torch.from_numpy(y), 4, 0.1, iters=50)
    from convplat.transfer.heads import fold

    folded = fold(head, mean, std)
    assert torch.allclose(folded(xt), head((xt - mean) / std), atol=1e-4)


# --- freezing and the extractor ------------------------------------------------------------


def test_extractor_cuts_match_the_model_contract(workspace: Path):
    _, checkpoint, mean = listing_and_checkpoint(workspace)
    model = checkpoint.build()
    images = torch.randn(2, 3, 224, 224)
    extractor = FeatureExtractor(model, ("fc7", "fc6", "conv5"))
    with torch.no_grad():
        out = extractor.forward_all(images)
        pooled = model.forward_features(images)
        fc7 = model.forward_head(pooled, pre_logits=True)
        fc6 = model.classifier[:3](torch.flatten(pooled, 1))
    assert torch.allclose(out["fc7"], fc7) and torch.allclose(out["fc6"], fc6)
    assert torch.allclose(out["conv5"], torch.flatten(pooled, 1))
    assert extractor.dims == {"fc7": 4096, "fc6": 4096, "conv5": 256 * 6 * 6}
    extractor.train()
    assert not extractor.training  # dropout never acts on frozen features


def test_freezing_trains_only_the_head_and_full_mode_changes_the_backbone(workspace: Path):
    listing, checkpoint, mean = listing_and_checkpoint(workspace)
    jpegs, _ = decode_files([it.path for it in listing.items[:6]])
    labels = np.array([it.label for it in listing.items[:6]])
    transform = make_transform(mean, checkpoint.input_scale)
    model = checkpoint.build()
    before = state_dict_bytes(model)
    net = TransferNet(model, "fc7", num_classes=3)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    head_before = net.head.weight.detach().clone()
    train_network(net, jpegs, labels, transform, crop=224, epochs=1, batch_size=3, lr=1e-2)
    assert state_dict_bytes(model) == before  # the backbone is bit-identical
    assert not torch.equal(net.head.weight, head_before)
    assert isinstance(frozen_extractor(model, "conv5"), FeatureExtractor)

    full = pretrained_model(checkpoint, num_classes=3, seed=0)
    conv1 = full.features[0].weight.detach().clone()
    train_network(full, jpegs, labels, transform, crop=224, epochs=1, batch_size=6, lr=1e-3)
    assert not torch.equal(full.features[0].weight, conv1)  # mode full fine-tunes everything


# --- the feature cache ------------------------------------------------------------------------


def test_cached_features_are_reused_and_invalidated_by_new_weights(tmp_path, monkeypatch):
    root = tmp_path
    make_caltech101(root / "data", counts=(3, 2), quirks=False)
    run = make_run(root)
    listing = read_dataset(root / "data", "caltech101")
    cache = str(root / "cache")
    calls = []
    original = FeatureExtractor.forward_all

    def counted(self, images):
        calls.append(len(images))
        return original(self, images)

    monkeypatch.setattr(FeatureExtractor, "forward_all", counted)

    def run_once():
        checkpoint = load_checkpoint(str(run), "unused")
        mean = np.load(Path(checkpoint.data) / "stats.npz")["mean"]
        return gather(listing, checkpoint, mean, cuts=("fc7",), flip=True, cache_dir=cache)

    first = run_once()
    assert sum(calls) == 2 * 5 and first.cache["fc7"]["reused"] is False  # 5 images x 2 views
    assert first.features["fc7"].shape == (2, 5, 4096)
    calls.clear()
    second = run_once()
    assert calls == [] and second.cache["fc7"]["reused"] is True
    assert np.array_equal(first.features["fc7"], second.features["fc7"])
    assert np.array_equal(first.labels, second.labels)

    # New weights under the same path: a different sha256, so the cache misses.
    state = load_safetensors((run / "model.safetensors").read_bytes())
    state["classifier.3.weight"] = state["classifier.3.weight"] * 1.5
    from safetensors.torch import save

    (run / "model.safetensors").write_bytes(save(state))
    third = run_once()
    assert sum(calls) == 10 and third.cache["fc7"]["reused"] is False
    assert not np.array_equal(first.features["fc7"], third.features["fc7"])
    assert len(list((root / "cache").glob("features-*.npz"))) == 2


def test_ray_extraction_equals_in_process(tmp_path, ray_session):
    make_caltech101(tmp_path / "data" / "caltech101", counts=(2, 2), quirks=True)
    make_run(tmp_path)
    listing, checkpoint, mean = listing_and_checkpoint(tmp_path)
    local = gather(listing, checkpoint, mean, cuts=("fc7", "conv5"), executor="local")
    remote = gather(
        listing, checkpoint, mean, cuts=("fc7", "conv5"), executor="ray", need_jpegs=True
    )
    assert remote.executor == "ray" and local.executor == "local"
    assert np.array_equal(local.kept, remote.kept) and len(remote.jpegs) == len(remote.kept)
    assert [Path(p).name for p, _ in remote.rejected] == ["broken.jpg"]
    for cut in ("fc7", "conv5"):
        assert np.allclose(local.features[cut], remote.features[cut], rtol=1e-4, atol=1e-4)


# --- end to end -------------------------------------------------------------------------------


def test_transfer_end_to_end_on_a_tiny_tree(workspace: Path):
    out = workspace / "out"
    config = TransferConfig(
        dataset="caltech101",
        data=str(workspace / "data" / "caltech101"),
        runs=str(workspace / "runs"),
        out=str(out),
        modes="head,scratch",
        cuts="fc7,conv5",
        train_per_class="3",
        test_per_class=3,
        splits=2,
        epochs=1,
        batch_size=16,  # one Adam step per epoch: AlexNet's step costs ~0.7 s on a CPU
        weight_decays="0.01,1",
        progress=False,
    )
    results = transfer(config)
    run = Path(results["run_dir"])
    assert run.parent == out and run.name.startswith("transfer-caltech101-")
    saved = json.loads((run / "results.json").read_text())
    assert saved["settings"] == json.loads(json.dumps(results["settings"]))
    assert json.loads((run / "config.json").read_text())["modes"] == ["head", "scratch"]
    labels = [(s["label"], s["train_per_class"]) for s in results["settings"]]
    assert labels == [("head (fc7)", 3), ("head (conv5)", 3), ("scratch", 3)]
    for s in results["settings"]:
        assert len(s["splits"]) == 2 and 0 <= s["mean"] <= 1
        assert s["mean"] == pytest.approx(np.mean([x["accuracy"] for x in s["splits"]]))
        assert [x["train"] for x in s["splits"]] == [9, 9]
    head = results["settings"][0]
    assert head["mean"] > 0.9  # colour-tinted classes are linearly separable
    assert [Path(r["path"]).name for r in results["rejected"]] == ["broken.jpg"]
    assert results["images"] == 18 and results["class_images"] == [8, 6, 4]
    assert results["features"]["cache"]["fc7"]["reused"] is False
    weights = load_safetensors((run / "head.safetensors").read_bytes())
    assert weights["fc7.train3.weight"].shape == (3, 4096)
    assert weights["conv5.train3.weight"].shape == (3, 9216)
    assert (run / "confusion-fc7-3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second call with another train size reuses the cached features (head only: quick).
    again = transfer(dataclasses.replace(config, modes=("head",), train_per_class=(3, 5)))
    assert again["features"]["cache"]["fc7"]["reused"] is True
    assert again["run_dir"] != results["run_dir"]
    assert [s["mean"] for s in again["settings"][:2]] == [
        s["mean"] for s in results["settings"][:2]
    ]
    # anchor has 4 images: at 5/class it trains on 3 and tests on 1.
    assert again["short_classes"]["5"] == [
        {"class": 2, "images": 4, "train": 3, "test": 1, "name": "anchor"}
    ]
    table = format_table(again)
    assert "3/class" in table and "5/class" in table and "head (conv5)" in table
    assert "anchor (4: 3 train/1 test)" in table and "scratch" in format_table(results)
    assert (Path(again["run_dir"]) / "confusion-conv5-5.png").exists()


def test_folder_dataset_with_flip_augmentation(tmp_path: Path, workspace: Path):
    for c in range(2):
        for i in range(4):
            write(tmp_path / "set" / f"class{c}" / f"{i}.jpg", class_jpeg(c, i))
    write(tmp_path / "set" / "README.md", "not a class")
    results = transfer(
        TransferConfig(
            dataset=f"folder:{tmp_path / 'set'}",
            runs=str(workspace / "runs"),
            out=str(tmp_path / "out"),
            train_per_class=2,
            test_per_class=2,
            splits=1,
            augment="flip",
            weight_decays="0.1",
            cache=False,
            progress=False,
        )
    )
    assert Path(results["run_dir"]).name.startswith("transfer-folder-set-")
    assert results["classes"] == ["class0", "class1"]
    assert results["settings"][0]["splits"][0]["test"] == 4
    assert results["features"]["cache"]["fc7"]["file"] is None


def test_grayscale_decodes_like_the_shards(tmp_path: Path):
    path = write(tmp_path / "g.jpg", jpeg_bytes(300, 200, seed=1, mode="L"))
    (jpeg,), (reason,) = decode_files([str(path)])
    assert reason is None
    pixels = simplejpeg.decode_jpeg(jpeg, colorspace="RGB")
    assert pixels.shape == (256, 256, 3)
    assert np.abs(pixels[..., 0].astype(int) - pixels[..., 2]).max() <= 2  # still gray


def test_cli_transfer_prints_the_table(workspace: Path, capsys):
    from convplat.cli.main import main

    args = [
        "transfer",
        "caltech101",
        "--data",
        str(workspace / "data" / "caltech101"),
        "--runs",
        str(workspace / "runs"),
        "--out",
        str(workspace / "cli-out"),
        "--train-per-class",
        "3",
        "--test-per-class",
        "3",
        "--splits",
        "2",
        "--weight-decays",
        "0.1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "head (fc7)" in out and "3/class" in out and "results written to" in out
    assert main([*args, "--splits", "0"]) == 2  # the last value wins
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--splits" in err[0]


def test_scratch_transfer_is_bit_reproducible(workspace: Path, monkeypatch):
    """The same seed gives the same numbers, whatever ran before in the process (a cold or warm
    feature cache, another command): dropout draws from torch's global generator, so each
    network's training runs under its own seed. Checked on the trained weights themselves (a
    tiny test split's accuracy would hide a difference)."""
    from convplat.transfer import finetune

    trained = []
    train_network = finetune.train_network

    def recording(model, *args, **kwargs):
        model = train_network(model, *args, **kwargs)
        trained.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        return model

    monkeypatch.setattr(finetune, "train_network", recording)
    config = TransferConfig(
        dataset="caltech101",
        data=str(workspace / "data" / "caltech101"),
        runs=str(workspace / "runs"),
        out=str(workspace / "repro"),
        modes="scratch",
        train_per_class="2",
        test_per_class=2,
        splits=1,
        epochs=1,
        batch_size=8,
        progress=False,
    )
    outcomes = []
    for before in (0, 1):
        torch.manual_seed(before)  # what ran before leaves the global generator elsewhere
        torch.rand(7)
        results = transfer(config)
        outcomes.append(
            [(s["mean"], [x["accuracy"] for x in s["splits"]]) for s in results["settings"]]
        )
    assert outcomes[0] == outcomes[1]
    assert len(trained) == 2 and torch.equal(trained[0], trained[1])
