"""torchvision:alexnet: torchvision's weights from the torch cache, in convplat's contract."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torchvision
from torchvision.transforms.v2.functional import normalize

from convplat.errors import ConvplatError
from convplat.training.models.pretrained import (
    load_torchvision_alexnet,
    torchvision_cache_file,
)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def test_cached_weights_give_torchvision_outputs(torch_home):
    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None).eval()
    path = torchvision_cache_file()
    assert path.startswith(str(torch_home)) and path.endswith("alexnet-owt-7be5be79.pth")
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
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


def test_torchvision_checkpoint_is_the_same_network_in_convplat_s_pipeline(torch_home):
    """Folded normalisation: convplat's (pixels - 255·mean) / 255 into the folded model equals
    torchvision's Normalize into the original one."""
    from convplat.transfer.checkpoint import load_checkpoint

    torch.manual_seed(1)
    reference = torchvision.models.alexnet(weights=None).eval()
    path = torchvision_cache_file()
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    checkpoint = load_checkpoint("torchvision:alexnet")
    assert checkpoint.model == "torchvision_alexnet" and checkpoint.input_size == 224
    mean, _ = checkpoint.mean_and_quality()
    pixels = torch.randint(0, 256, (2, 3, 224, 224)).float()
    ours = (pixels - torch.from_numpy(mean[:224, :224]).permute(2, 0, 1)) * checkpoint.input_scale
    theirs = normalize(pixels / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        assert torch.allclose(checkpoint.build()(ours), reference(theirs), atol=1e-4)


def test_transfer_runs_zfnet_protocol_on_torchvision_weights(torch_home, tmp_path):
    from test_transfer import make_caltech101

    from convplat.config import TransferConfig
    from convplat.transfer import transfer

    path = torchvision_cache_file()
    os.makedirs(os.path.dirname(path))
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
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
