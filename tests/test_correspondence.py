"""Correspondence analysis (ZFNet §4.3, Table 1): known answers on a tiny network, the mask
geometry, and `convplat visualize correspondence` on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import jpeg_bytes
from torch import nn

from convplat.errors import ConvplatError
from convplat.pipeline.image import process_image
from convplat.training.checkpoints import state_dict_bytes
from convplat.training.models import create_model
from convplat.visualize.correspondence import (
    correspondence,
    cover,
    format_correspondence,
    image_to_input,
    parse_mask,
    run_correspondence,
    sign_distances,
)


class Identity(nn.Module):
    """Layer 5 = the input itself, layer 7 = its negation: every sign is known in advance."""

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        assert pre_logits
        return -torch.flatten(x, 1)


def test_same_part_same_signs_is_zero_and_opposite_signs_count():
    # Three 4x4 images: two positive, one negative everywhere. Covering the same 2x2 corner
    # changes 12 of 48 entries (3 channels x 4 pixels), with the sign of the image.
    images = torch.stack([torch.full((3, 4, 4), v) for v in (1.0, 2.0, -1.0)])
    result = correspondence(Identity(), images, [(0, 0, 2, 2)] * 3, random_draws=0)
    for layer in ("5", "7"):
        part = result["part"][layer]
        # Pairs: (0, 1) agree -> 0; (0, 2) and (1, 2) differ on the 12 covered entries -> 1/4.
        assert part["pairs"] == [[0, 1, 0.0], [0, 2, 0.25], [1, 2, 0.25]]
        assert part["mean"] == pytest.approx(1 / 6)
        assert part["std"] == pytest.approx(np.std([0, 0.25, 0.25], ddof=1))
        assert part["delta"] == pytest.approx(2 * 0.5)  # sum over ordered pairs i != j
    assert result["random"] == {}


def test_different_places_differ_and_the_random_control_is_known():
    images = torch.rand(2, 3, 4, 4) + 0.5  # positive everywhere
    # Non-overlapping 2x2 masks: 12 + 12 of 48 signs differ -> H = 0.5.
    result = correspondence(Identity(), images, [(0, 0, 2, 2), (2, 2, 2, 2)], random_draws=3)
    assert result["part"]["5"]["mean"] == pytest.approx(0.5)
    # A random control the size of the whole input can only sit at (0, 0): every sign is +1.
    full = correspondence(Identity(), images, [(0, 0, 4, 4)] * 2, random_draws=4, seed=7)
    assert full["random_masks"] == [[[0, 0, 4, 4]] * 2] * 4
    assert full["random"]["7"]["mean"] == 0.0 and full["random"]["7"]["pairs"] is None
    text = format_correspondence({**full, "name": "whole"})
    assert "whole" in text and "0.000 ± 0.000" in text


def test_random_masks_are_seeded_and_stay_inside():
    images = torch.rand(3, 3, 16, 12)
    a = correspondence(Identity(), images, [(1, 2, 5, 4)] * 3, random_draws=5, seed=1)
    b = correspondence(Identity(), images, [(1, 2, 5, 4)] * 3, random_draws=5, seed=1)
    assert a["random_masks"] == b["random_masks"]
    for draw in a["random_masks"]:
        for x, y, w, h in draw:
            assert (w, h) == (5, 4) and 0 <= x <= 12 - 5 and 0 <= y <= 16 - 4
    with pytest.raises(ValueError, match="not inside"):
        correspondence(Identity(), images, [(10, 0, 5, 4)] * 3)


def test_cover_and_sign_distances():
    images = torch.ones(2, 3, 5, 5)
    covered = cover(images, [(1, 2, 3, 1), (0, 0, 1, 1)])
    assert covered[0, :, 2, 1:4].eq(0).all() and covered[0].eq(0).sum() == 9
    assert covered[1].eq(0).sum() == 3 and images.eq(1).all()  # the originals are untouched
    d = sign_distances(torch.tensor([[1.0, -2.0, 0.0, 3.0], [2.0, 0.0, 0.0, -1.0]]))
    assert np.allclose(d, [[0, 0.5], [0.5, 0]])  # 0 is a sign of its own


def test_mask_maps_from_image_pixels_to_the_model_input():
    # 512 x 256: shorter side already 256, centre crop starts at x = 128, then the centre 224
    # window starts 16 further in both directions.
    geometry = process_image(jpeg_bytes(512, 256, seed=3), 256).geometry
    assert image_to_input((200, 40, 30, 20), geometry, 256, 224) == (56, 24, 30, 20)
    # Doubling the image halves the coordinates' scale.
    big = process_image(jpeg_bytes(1024, 512, seed=3), 256).geometry
    assert image_to_input((400, 80, 60, 40), big, 256, 224) == (56, 24, 30, 20)
    assert image_to_input((100, 0, 60, 30), geometry, 256, 224) == (0, 0, 16, 14)  # clipped
    with pytest.raises(ConvplatError, match="outside the centre 224x224 crop"):
        image_to_input((0, 0, 100, 50), geometry, 256, 224)
    assert parse_mask("1,2,3,4") == (1, 2, 3, 4)
    for bad in ("1,2,3", "1,2,0,4", "a,b,c,d", "-1,0,2,2"):
        with pytest.raises(ConvplatError, match="--mask: expected x,y,w,h"):
            parse_mask(bad)


def tiny_run(root: Path) -> Path:
    """A run as `convplat train` leaves it: ZFNet with random weights and made-up stats."""
    torch.manual_seed(0)
    run = root / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(state_dict_bytes(create_model("zfnet", num_classes=4)))
    data = root / "shards"
    data.mkdir()
    np.savez(
        data / "stats.npz",
        mean=np.full((256, 256, 3), 120, np.float32),
        rgb_mean=np.full(3, 120, np.float32),
        eigval=np.ones(3, np.float32),
        eigvec=np.eye(3, dtype=np.float32),
    )
    config = {"model": "zfnet", "num_classes": 4, "data": str(data), "input_scale": 0.02}
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_command_on_a_tiny_run(tmp_path: Path, capsys):
    from convplat.cli.main import main

    run = tiny_run(tmp_path)
    files = []
    for i in range(3):
        files.append(tmp_path / f"dog{i}.jpg")
        files[-1].write_bytes(jpeg_bytes(320, 256, seed=i))
    path, result = run_correspondence(
        str(run), [str(f) for f in files], ["150,100,40,30"], name="eye", random_draws=2
    )
    assert path.endswith("visualize/correspondence-eye.json")
    saved = json.loads(Path(path).read_text())
    assert saved["masks"] == [[102, 84, 40, 30]] * 3  # 150 - 32 (crop) - 16 (window), 100 - 16
    for layer in ("5", "7"):
        for key in ("part", "random"):
            stats = saved[key][layer]
            assert 0 <= stats["mean"] <= 1 and stats["std"] >= 0
        assert len(saved["part"][layer]["pairs"]) == 3
    # The JSON holds what the function returned.
    assert saved["part"] == json.loads(json.dumps(result["part"]))

    args = ["visualize", "correspondence", str(run), *map(str, files)]
    assert main([*args, "--mask", "10,10,20,20", "--coords", "input", "--random-draws", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer" in out and "random" in out and "correspondence-part.json" in out
    assert main([*args, "--mask", "1,1,5,5", "--mask", "2,2,5,5"]) == 2  # 2 masks, 3 images
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one --mask for all images or one per image" in err[0]
    assert main([*args[:4], "--mask", "1,1,5,5"]) == 2  # one image: no pairs
    assert "at least 2 images" in capsys.readouterr().err
