"""torchvision:alexnet: torchvision's weights from the torch cache, in convplat's contract."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torchvision.transforms.v2.functional import normalize

from convplat.errors import ConvplatError
from convplat.training.models.pretrained import (
    load_torchvision_alexnet,
    torchvision_cache_file,
)


def test_cached_weights_give_torchvision_outputs(torch_home, cached_alexnet):
    reference = cached_alexnet
    path = torchvision_cache_file()
    assert path.startswith(str(torch_home)) and path.endswith("alexnet-owt-7be5be79.pth")
    model = load_torchvision_alexnet()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(images), reference(images), atol=1e-6)
        fc7 = model.forward_head(model.forward_features(images), pre_logits=True)
    assert fc7.shape == (2, 4096)
    assert model.layer_names == ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def test_missing_weights_name_where_torchvision_looked(torch_home):
    with pytest.raises(ConvplatError, match=str(torch_home)):
        load_torchvision_alexnet()


def test_damaged_weights_are_one_line(torch_home):
    path = torchvision_cache_file()
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as handle:
        handle.write(b"not a checkpoint")
    with pytest.raises(ConvplatError, match="not a torchvision AlexNet state dict"):
        load_torchvision_alexnet()


def test_torchvision_checkpoint_is_the_same_network_in_convplat_s_pipeline(cached_alexnet):
    """Folded normalisation: convplat's (pixels - 255·mean) / 255 into the folded model equals
    torchvision's Normalize into the original one."""
    from convplat.transfer.checkpoint import load_checkpoint

    reference = cached_alexnet
    checkpoint = load_checkpoint("torchvision:alexnet")
    assert checkpoint.model == "torchvision_alexnet" and checkpoint.input_size == 224
    mean, _ = checkpoint.mean_and_quality()
    pixels = torch.randint(0, 256, (2, 3, 224, 224)).float()
    ours = (pixels - torch.from_numpy(mean[:224, :224]).permute(2, 0, 1)) * checkpoint.input_scale
    theirs = normalize(pixels / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        assert torch.allclose(checkpoint.build()(ours), reference(theirs), atol=1e-4)


def test_transfer_runs_zfnet_protocol_on_torchvision_weights(cached_alexnet, tmp_path):
    from test_transfer import make_caltech101

    from convplat.config import TransferConfig
    from convplat.transfer import transfer

    make_caltech101(tmp_path / "caltech101")
    results = transfer(
        TransferConfig(
            dataset="caltech101",
            data=str(tmp_path / "caltech101"),
            checkpoint="torchvision:alexnet",
            out=str(tmp_path / "out"),
            train_per_class="3",
            test_per_class=3,
            splits=2,
            weight_decays="0.01,1",
            progress=False,
        )
    )
    assert [s["label"] for s in results["settings"]] == ["head (fc7)"]
    assert all(0 <= s["mean"] <= 1 for s in results["settings"])
    config = json.loads(open(os.path.join(results["run_dir"], "config.json")).read())
    assert config["model"] == "torchvision_alexnet" and config["mean_image"] == ""


def test_visualize_takes_torchvision_weights(cached_alexnet, tmp_path, monkeypatch, capsys):
    """`convplat visualize … torchvision:alexnet`: every picture that takes a checkpoint,
    end to end through the CLI, on the network torchvision would run."""
    from conftest import jpeg_bytes
    from test_visualize import decode, write_val_shards

    from convplat.cli.main import main
    from convplat.pipeline.image import process_image
    from convplat.visualize.runs import load_model, preprocess

    monkeypatch.chdir(tmp_path)
    image = tmp_path / "cat.jpg"
    image.write_bytes(jpeg_bytes(300, 260, seed=1))
    # The pictures see what torchvision's preset (shorter side 256, centre 224, Normalize)
    # feeds its model: the folded network on convplat's preprocessing equals the reference.
    model, config = load_model("torchvision:alexnet")
    ours = preprocess(image.read_bytes(), config, 224)
    pixels = torch.from_numpy(process_image(image.read_bytes(), 256).pixels[16:240, 16:240].copy())
    theirs = normalize(pixels.permute(2, 0, 1) / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        assert torch.allclose(model(ours[None]), cached_alexnet(theirs[None]), atol=1e-4)

    def visualize(args: str) -> int:
        return main(["visualize", *args.split()])

    out = tmp_path / "visualize-torchvision-alexnet"
    assert visualize("filters torchvision:alexnet") == 0
    assert decode((out / "filters.png").read_bytes()).std() > 10
    assert (
        visualize(f"occlusion torchvision:alexnet {image} --size 112 --stride 112 --out occ") == 0
    )
    assert decode((tmp_path / "occ" / "occlusion-cat.png").read_bytes()).std() > 10
    shards = write_val_shards(tmp_path / "shards", [3, 2], size=256)
    deconv = f"deconv torchvision:alexnet --layer 2 --maps 1,5 --data {shards} --executor local"
    assert visualize(deconv) == 0
    assert decode((out / "deconv-layer2.png").read_bytes()).std() > 10
    other = tmp_path / "dog.jpg"
    other.write_bytes(jpeg_bytes(280, 300, seed=2))
    mask = "--mask 100,100,40,40 --coords input --random-draws 1"
    assert visualize(f"correspondence torchvision:alexnet {image} {other} {mask}") == 0
    assert json.loads((out / "correspondence-part.json").read_text())["part"]["5"]["mean"] >= 0
    capsys.readouterr()

    # What a run directory gives and torchvision's weights cannot: one line each, exit 2.
    for args, says in [
        ("deconv torchvision:alexnet --layer 2", "pass --data SHARDS"),
        ("evolution torchvision:alexnet --layer 2 --maps 1", "epoch checkpoints"),
        ("filters torchvision:alexnet --weights best", "one set of weights"),
    ]:
        assert visualize(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err


def test_visualize_without_cached_weights_names_where_it_looked(torch_home, tmp_path, capsys):
    from convplat.cli.main import main

    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    for args in ("filters torchvision:alexnet", f"occlusion torchvision:alexnet {image}"):
        assert main(["visualize", *args.split(), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and torchvision_cache_file() in err[0], err
    assert not (tmp_path / "out").exists()


def test_features_of_torchvision_weights_go_to_the_working_directory(
    cached_alexnet, tmp_path, monkeypatch
):
    """torchvision:alexnet has no run directory: its features default to
    ./features-torchvision-alexnet/, never into the torch cache."""
    import pyarrow.parquet as pq
    from conftest import jpeg_bytes

    from convplat.export import extract

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(jpeg_bytes(120, 100, seed=i))
    summary = extract("torchvision:alexnet", str(folder), layer="fc6", executor="local")
    out = tmp_path / "features-torchvision-alexnet" / "photos-fc6.parquet"
    assert os.path.samefile(summary["out"], out) and summary["rows"] == 3
    assert pq.read_table(out).num_rows == 3
    cache = os.path.dirname(torchvision_cache_file())
    assert not any("features" in name for name in os.listdir(cache))
