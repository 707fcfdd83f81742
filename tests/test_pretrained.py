"""torchvision:alexnet: torchvision's weights from the torch cache, in convplat's contract."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

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
