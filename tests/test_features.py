"""`convplat features`: any layer's activations to Parquet, equal to the model's own forward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import jpeg_bytes, make_imagenet_tree

from convplat.cli.main import main
from convplat.config import PrepareConfig
from convplat.errors import ConfigError, ConvplatError, DatasetError
from convplat.export import extract, read_features, shard_samples
from convplat.pipeline import prepare
from convplat.pipeline.shardset import load_stats, read_manifest
from convplat.training.augment import center_window
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.models import create_model
from convplat.transfer.extract import decode_pixels, make_transform
from convplat.transfer.extractor import FeatureExtractor, layer_dims, resolve_layer

SCALE = 1 / 64


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, ray_session) -> Path:
    """Tiny shards (3 classes) and a hand-made AlexNet run trained on them (config + weights)."""
    root = tmp_path_factory.mktemp("features")
    make_imagenet_tree(root / "raw", classes=3, train_per_class=3, val_per_class=2, quirks=False)
    shards = root / "shards"
    prepare(PrepareConfig(source=str(root / "raw"), out=str(shards), shard_size=4, progress=False))
    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=3)
    run = root / "runs" / "alexnet-test"
    run.mkdir(parents=True)
    config = {"model": "alexnet", "num_classes": 3, "data": str(shards), "input_scale": SCALE}
    (run / "config.json").write_text(json.dumps(config))
    (run / "model.safetensors").write_bytes(state_dict_bytes(model))
    folder = root / "images"  # a flat folder: no classes; one file is not an image
    folder.mkdir()
    for i in range(5):
        (folder / f"img{i}.jpg").write_bytes(jpeg_bytes(120 + 9 * i, 100, seed=40 + i))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def model_inputs(shards: Path, jpegs: list[bytes]) -> torch.Tensor:
    """The centre 224 crop of 256 JPEGs, preprocessed as in training."""
    transform = make_transform(load_stats(str(shards))["mean"], SCALE)
    pixels = decode_pixels(jpegs)
    top, left, _ = center_window(256, 256, 224)
    crops = torch.from_numpy(pixels[:, top : top + 224, left : left + 224])
    windows = torch.tensor([[top, left, 0]] * len(jpegs))
    return transform(crops, windows, lighting=False)


def all_shard_samples(shards: Path):
    manifest = json.loads((shards / "manifest.json").read_text())
    keys, labels, jpegs = [], [], []
    for split in manifest["splits"]:
        for shard in manifest["splits"][split]["shards"]:
            k, lab, j = shard_samples(str(shards), shard["name"], shard["count"])
            keys, labels, jpegs = keys + k, labels + lab, jpegs + j
    return keys, labels, jpegs


def test_fc7_features_from_shards_equal_the_models_activations(workspace: Path):
    run, shards = workspace / "runs" / "alexnet-test", workspace / "shards"
    out = workspace / "fc7.parquet"
    summary = extract(str(run), str(shards), layer="fc7", out=str(out), executor="local")
    assert summary["rows"] == 15 and summary["dim"] == 4096 and summary["executor"] == "local"
    back = read_features(str(out))
    keys, labels, jpegs = all_shard_samples(shards)
    assert back["keys"] == keys and back["labels"].tolist() == labels
    index = pd.read_parquet(shards / "index.parquet")  # what `prepare` recorded per key
    assert dict(zip(index["key"], index["label"], strict=True)) == dict(
        zip(keys, labels, strict=True)
    )
    model = create_model("alexnet", num_classes=3)
    model.load_state_dict(_weights(run))
    model.eval()
    with torch.no_grad():
        fc7 = model.forward_head(model.forward_features(model_inputs(shards, jpegs)), True)
    assert back["vectors"].dtype == np.float32 and back["vectors"].shape == (15, 4096)
    np.testing.assert_allclose(back["vectors"], fc7.numpy(), rtol=1e-4, atol=1e-5)
    table = pq.read_table(out)  # the directory of parts, in one call
    assert str(table.schema.field("vector").type) == "fixed_size_list<element: float>[4096]"
    assert sorted(table.column("key").to_pylist()) == sorted(keys)
    assert back["meta"]["layer"] == "fc7" and back["meta"]["model"] == "alexnet"
    frame = pd.read_parquet(out)
    assert len(frame) == 15 and set(frame.columns) == {"key", "label", "vector"}
    shards_listed = [
        s for split in read_manifest(shards)["splits"].values() for s in split["shards"]
    ]
    assert back["meta"]["parts"] == [f"part-{i:06d}.parquet" for i in range(len(shards_listed))]


def _weights(run: Path) -> dict:
    from safetensors.torch import load

    return load((run / "model.safetensors").read_bytes())


@pytest.mark.parametrize("pool", ["flatten", "avg", "max"])
def test_conv_layers_flattened_or_pooled(workspace: Path, pool: str):
    run, shards = workspace / "runs" / "alexnet-test", workspace / "shards"
    out = workspace / f"conv2-{pool}.parquet"
    extract(str(run), str(shards), layer="conv2", pool=pool, split="val", out=str(out))
    back = read_features(str(out))
    model = create_model("alexnet", num_classes=3)
    model.load_state_dict(_weights(run))
    model.eval()
    seen = []
    # conv2's output in ZFNet's sense: after its ReLU, LRN and max-pool (features[7])
    hook = model.features[7].register_forward_hook(lambda _m, _i, o: seen.append(o))
    keys, _, jpegs = all_shard_samples(shards)
    jpegs = [j for k, j in zip(keys, jpegs, strict=True) if k in set(back["keys"])]
    with torch.no_grad():
        model(model_inputs(shards, jpegs))
    hook.remove()
    maps = seen[0]  # (N, 256, 13, 13)
    want = {"flatten": maps.flatten(1), "avg": maps.mean((2, 3)), "max": maps.amax((2, 3))}[pool]
    assert len(back["keys"]) == 6  # the val split only
    np.testing.assert_allclose(back["vectors"], want.numpy(), rtol=1e-4, atol=1e-5)
    assert back["vectors"].shape[1] == (256 * 13 * 13 if pool == "flatten" else 256)


def test_cli_ray_tasks_on_a_folder_equal_in_process(workspace: Path, capsys):
    run = workspace / "runs" / "alexnet-test"
    local, remote = workspace / "local.parquet", workspace / "ray.parquet"
    args = [str(run), str(workspace / "images"), "--layer", "logits"]
    assert main(["features", *args, "--out", str(local), "--executor", "local"]) == 0
    assert main(["features", *args, "--out", str(remote), "--executor", "ray"]) == 0
    printed = capsys.readouterr().out
    assert "5 x 3 fc8 features" in printed and "1 rejected" in printed
    assert "(ray on 1 node(s)," in printed  # the local Ray: one node
    a, b = read_features(str(local)), read_features(str(remote))
    assert a["keys"] == b["keys"] == [f"img{i}" for i in range(5)]
    assert a["labels"].tolist() == [-1] * 5  # a flat folder has no classes
    np.testing.assert_allclose(a["vectors"], b["vectors"], rtol=1e-4, atol=1e-5)
    assert a["meta"]["rejected"] == 1


def test_transfer_features_use_the_same_extraction(workspace: Path):
    """transfer's cache path (gather -> extract_chunk) gives the Parquet file's numbers."""
    from convplat.pipeline.readers import read_dataset
    from convplat.transfer import load_checkpoint
    from convplat.transfer.gather import gather

    run, raw = workspace / "runs" / "alexnet-test", workspace / "raw"
    out = workspace / "raw-conv5.parquet"
    extract(str(run), str(raw), layer="conv5", out=str(out), executor="local")
    back = read_features(str(out))
    listing = read_dataset(raw)
    checkpoint = load_checkpoint(str(run))
    mean = load_stats(checkpoint.data)["mean"]
    data = gather(listing, checkpoint, mean, cuts=("conv5",), executor="local")
    assert back["keys"] == [listing.items[i].key for i in data.kept]
    assert back["labels"].tolist() == data.labels.tolist()
    np.testing.assert_allclose(back["vectors"], data.features["conv5"][0], rtol=1e-5, atol=1e-6)


def test_layer_names_follow_the_paper_numbering_in_ablations():
    with torch.device("meta"):
        zf = create_model("zfnet")
        no34 = create_model("zfnet_no34")
        wide = create_model("zfnet_b")
        accurate = create_model("overfeat_accurate")
    assert layer_dims(zf, ("conv1", "conv5", "fc6", "fc8"), last_conv_alias=False) == {
        "conv1": 96 * 55 * 55,  # Fig. 3: 55x55x96 after pool and contrast norm
        "conv5": 256 * 6 * 6,
        "fc6": 4096,
        "fc8": 1000,
    }
    assert layer_dims(wide, ("conv4",), pool="avg") == {"conv4": 1024}
    assert resolve_layer(no34, "logits") == "fc8"
    with pytest.raises(ConfigError, match="no layer 'conv3'.*conv1, conv2, conv5, fc6"):
        resolve_layer(no34, "conv3")
    assert resolve_layer(accurate, "conv5", last_conv_alias=True) == "conv6"  # transfer's cut
    assert resolve_layer(accurate, "conv5") == "conv5"
    with pytest.raises(ConfigError, match="--pool"):
        layer_dims(zf, ("conv1",), pool="mean")


def test_extractor_on_an_ablation_without_fc7():
    torch.manual_seed(0)
    model = create_model("zfnet_no67", num_classes=4).eval()
    extractor = FeatureExtractor(model, ("conv5", "fc8"), last_conv_alias=False)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = extractor.forward_all(images)
        logits = model(images)
    assert torch.allclose(out["fc8"], logits, atol=1e-6)
    assert torch.allclose(out["conv5"], model.forward_features(images).flatten(1))
    with pytest.raises(ConfigError, match="fc7"):
        FeatureExtractor(model, ("fc7",))


def test_user_mistakes_exit_2_with_one_line(workspace: Path, capsys):
    run = str(workspace / "runs" / "alexnet-test")
    assert main(["features", run, str(workspace / "shards"), "--layer", "conv9"]) == 2
    assert main(["features", run, str(workspace / "nowhere")]) == 2
    assert main(["features", run, str(workspace / "shards"), "--executor", "spark"]) == 2
    assert main(["features", str(workspace / "no-run"), str(workspace / "shards")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("convplat: error:") for line in err)
    assert "conv9" in err[0] and "nowhere" in err[1] and "--executor" in err[2]
    assert "RUN: " in err[3] and "--checkpoint" not in err[3]  # RUN is an argument here


@pytest.mark.parametrize("out", ["a-file/below", "/proc/convplat-features"])
def test_an_out_that_cannot_be_created_is_one_line(workspace: Path, tmp_path: Path, capsys, out):
    run = str(workspace / "runs" / "alexnet-test")
    (tmp_path / "a-file").write_text("not a directory")
    args = ["features", run, str(workspace / "shards"), "--out", str(tmp_path / out)]
    assert main([*args, "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out: cannot create " in err[0], err


def test_an_unknown_device_is_one_line(workspace: Path, capsys):
    run = str(workspace / "runs" / "alexnet-test")
    assert main(["features", run, str(workspace / "shards"), "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["convplat: error: --device: expected cpu, cuda or cuda:N, got 'gpu'"]


def test_each_task_writes_its_own_part_and_returns_only_counts(workspace: Path, monkeypatch):
    """The streaming contract: what a task hands back to the driver has no vectors in it, so
    the driver's memory does not grow with the number of images."""
    import convplat.export as export

    returned = []
    original = export.extract_shard

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        returned.append(result)
        return result

    monkeypatch.setattr(export, "extract_shard", spy)
    run, shards = workspace / "runs" / "alexnet-test", workspace / "shards"
    out = workspace / "streamed"
    extract(str(run), str(shards), layer="fc6", out=str(out), executor="local", progress=False)
    assert returned and all(set(r) == {"rows", "images", "rejected"} for r in returned)
    parts = sorted(p.name for p in out.iterdir() if p.name.startswith("part-"))
    assert len(parts) == len(returned) and sum(r["rows"] for r in returned) == 15
    for name in parts:  # each part is a complete Parquet file on its own
        assert pq.read_table(out / name).num_rows > 0


def test_an_export_replaces_only_its_own_files(workspace: Path):
    run, shards = workspace / "runs" / "alexnet-test", workspace / "shards"
    out = workspace / "again"
    extract(str(run), str(shards), layer="fc8", out=str(out), executor="local", progress=False)
    extract(str(run), str(shards), layer="fc8", split="val", out=str(out), executor="local")
    assert len(read_features(str(out))["keys"]) == 6  # the first export's parts are gone
    assert len(pd.read_parquet(out)) == 6
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="did not write .*notes.txt"):
        extract(str(run), str(shards), layer="fc8", out=str(out), executor="local")
    assert (out / "notes.txt").read_text() == "mine" and (out / "_features.json").exists()
    (workspace / "old.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="is a file"):
        extract(str(run), str(shards), out=str(workspace / "old.parquet"), executor="local")


def test_a_damaged_shard_read_in_a_ray_task_is_one_line(workspace: Path, tmp_path: Path):
    shards = tmp_path / "shards"
    shutil.copytree(workspace / "shards", shards)
    tar = shards / "val-000000.tar"
    tar.write_bytes(tar.read_bytes()[:3000])  # cut inside a member
    run = workspace / "runs" / "alexnet-test"
    with pytest.raises(DatasetError) as caught:
        extract(str(run), str(shards), out=str(tmp_path / "out"), executor="ray", progress=False)
    message = str(caught.value)
    assert type(caught.value) is DatasetError, type(caught.value)  # not Ray's wrapper
    assert "val-000000.tar" in message and "\n" not in message


def test_a_relative_flat_folder_reaches_the_tasks_as_absolute_paths(workspace: Path, monkeypatch):
    """Tasks on other nodes run in other working directories: the file paths they get must
    not depend on the driver's."""
    from convplat.export import open_source

    monkeypatch.chdir(workspace)
    source = open_source("images")
    assert len(source.paths) == 6 and all(Path(p).is_absolute() for p in source.paths)
    assert Path(source.paths[0]).parent == workspace / "images"


def test_parts_a_cluster_wrote_elsewhere_are_one_line(tmp_path: Path):
    """With --address and a local --out, parts written on other nodes' disks are missing here:
    features says so instead of writing a _features.json that lists them."""
    from convplat.export import _check_visible
    from convplat.pipeline.outdir import OutputError
    from convplat.storage import resolve

    (tmp_path / "part-000000.parquet").write_bytes(b"x")
    parts = ["part-000000.parquet", "part-000001.parquet"]
    with pytest.raises(OutputError, match="1 part.*part-000001.parquet.*shares"):
        _check_visible(resolve(tmp_path), parts)
    _check_visible(resolve(tmp_path), parts[:1])


def test_stored_weights_are_built_once_per_process(ray_session):
    """Ray tasks get StoredWeights (a reference, not the bytes) and build the model once per
    worker process; plain bytes build a fresh model each time; new weights replace the old."""
    from convplat.training.checkpoints import state_dict_bytes
    from convplat.training.models import create_model
    from convplat.transfer.checkpoint import build_model
    from convplat.transfer.extract import StoredWeights, build_once

    weights = state_dict_bytes(create_model("alexnet", num_classes=4))
    stored = StoredWeights(weights)
    first = build_once("alexnet", 4, stored)
    assert build_once("alexnet", 4, stored) is first
    assert build_once("alexnet", 4, weights) is not first
    assert build_once("alexnet", 4, StoredWeights(weights)) is not first
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(first(x), build_model("alexnet", 4, weights)(x))


@pytest.mark.parametrize("cut", ["conv1", "conv5", "fc7"])
def test_tasks_get_only_the_layers_up_to_the_cut(cut: str):
    """needed_weights ships the tensors of the layers up to the cut (conv1: 140 KB of
    AlexNet's 244 MB, conv5: 9.3 MB) and a model built from them gives the same features as
    the whole one."""
    from convplat.transfer.checkpoint import build_model
    from convplat.transfer.extract import needed_weights

    torch.manual_seed(0)
    whole = create_model("alexnet", num_classes=4).eval()
    weights = state_dict_bytes(whole)
    needed = needed_weights(weights, "alexnet", 4, (cut,))
    limit = {"conv1": 150_000, "conv5": 10_000_000, "fc7": len(weights) - 16_000}[cut]
    assert len(needed) <= limit  # fc7: all but fc8 (4096 x 4 + 4 floats)
    partial = build_model("alexnet", 4, needed, partial=True)
    assert any(p.is_meta for p in partial.parameters())  # fc8 at least is left out
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = FeatureExtractor(whole, (cut,)).forward_all(x)[cut]
        assert torch.equal(FeatureExtractor(partial, (cut,)).forward_all(x)[cut], expected)
    with pytest.raises(ConvplatError, match="weights do not fit"):
        build_model("alexnet", 4, needed)  # a whole model needs every tensor
