"""OverFeat dense evaluation: offset pooling, interleaving, window geometry, map sizes, the
dense scores against the plain network on crops, and `convplat evaluate --mode dense`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_imagenet_tree
from torch import nn

from convplat.errors import ConfigError
from convplat.localize import (
    PAPER_SCALES,
    PAPER_TABLE_SIZES,
    dense_map,
    dense_scores,
    interleave,
    offset_count,
    offset_pool,
    window_boxes,
    window_step,
)
from convplat.training.dense import parse_scales, scaled_size, window_crop, window_logits
from convplat.training.models import ConvNet, create_model, list_models, reinitialize

# (unpooled stride, final pool stride) of every registered family.
STEPS = {"overfeat_accurate": (12, 3), "overfeat_fast": (16, 2)}
FAMILIES = ["alexnet", "zfnet", "overfeat_fast", "overfeat_accurate"]  # value checks: one each


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def live_model(name: str, num_classes: int = 5) -> ConvNet:
    """A registered model with He init (the papers' N(0, 0.01) leaves logits ~ biases)."""
    return reinitialize(create_model(name, num_classes=num_classes), "kaiming").eval()


class Tiny(ConvNet):
    """A two-stage net (33x33 input, unpooled stride 4, final pool 3/3). Unpadded (pad=0),
    bare crops of its windows are exactly its dense locations, so the window geometry can be
    checked without context; pad=1 gives conv2 a padded border, as the real nets have."""

    def __init__(self, conv_head: bool, pad: int = 0) -> None:
        features = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2),  # 33 -> 16
            nn.ReLU(),
            nn.MaxPool2d(2, 2),  # 8
            nn.Conv2d(4, 6, 3 + 2 * pad, padding=pad),  # 6
            nn.ReLU(),
            nn.MaxPool2d(3, 3),  # 2
        )
        if conv_head:
            head = nn.Sequential(nn.Conv2d(6, 8, 2), nn.ReLU(), nn.Conv2d(8, 5, 1))
        else:
            head = nn.Sequential(nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 5))
        super().__init__(features, head, input_size=33, feature_size=2, num_classes=5)


# --------------------------------------------------------------------------- offset pooling
@pytest.mark.parametrize("stride", ["fine", "coarse"])
def test_offset_pool_matches_direct_per_offset_max(stride):
    model = Tiny(conv_head=True)
    unpooled = torch.randn(2, 3, 11, 13)
    pooled = offset_pool(model, unpooled, stride)
    n = 3 if stride == "fine" else 1
    h, w = (11 - (n - 1) - 3) // 3 + 1, (13 - (n - 1) - 3) // 3 + 1  # the smallest offset
    assert pooled.shape == (n * n, 2, 3, h, w)
    for dy in range(n):
        for dx in range(n):
            for y in range(h):
                for x in range(w):
                    top, left = dy + 3 * y, dx + 3 * x
                    window = unpooled[..., top : top + 3, left : left + 3]
                    expected = window.amax(dim=(-2, -1))
                    assert torch.equal(pooled[dy * n + dx, :, :, y, x], expected)


def test_interleave_places_each_offset_on_its_own_grid():
    maps = torch.randn(9, 2, 4, 3, 5)
    out = interleave(maps)
    assert out.shape == (2, 4, 9, 15)
    for dy in range(3):
        for dx in range(3):
            for y in range(3):
                for x in range(5):
                    expected = maps[dy * 3 + dx, ..., y, x]
                    assert torch.equal(out[..., y * 3 + dy, x * 3 + dx], expected)
    with pytest.raises(ValueError, match="square"):
        interleave(torch.zeros(2, 1, 1, 1, 1))


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("name", list_models())
def test_offsets_and_steps_per_model(name):
    with torch.device("meta"):
        model = create_model(name, num_classes=5)
    unpooled, pool = STEPS.get(name, (16, 2))  # AlexNet, ZFNet: 4·2·2 / 2·2·2·2, pool 3/2
    assert offset_count(model, "coarse") == 1
    assert offset_count(model, "fine") == pool
    assert window_step(model, "fine") == unpooled
    assert window_step(model, "coarse") == unpooled * pool
    with torch.device("meta"):  # every model runs densely: 1 x 1 coarse, n x n fine, at least
        single = torch.empty(1, 3, model.input_size, model.input_size)
        assert dense_map(model, single, "coarse").shape == (1, 5, 1, 1)
        side = model.input_size + (pool - 1) * unpooled
        bigger = torch.empty(1, 3, side, side)
        assert dense_map(model, bigger, "fine").shape == (1, 5, pool, pool)
    with pytest.raises(ConfigError, match="--stride"):
        offset_count(model, "medium")


def test_window_boxes_row_major():
    with torch.device("meta"):
        model = create_model("overfeat_accurate", num_classes=5)
    boxes = window_boxes(model, 2, 3, "fine")
    assert boxes.shape == (6, 4)
    assert boxes[0].tolist() == [0, 0, 221, 221]
    assert boxes[2].tolist() == [24, 0, 245, 221]  # (Y=0, X=2)
    assert boxes[4].tolist() == [12, 12, 233, 233]  # (Y=1, X=1)
    assert window_boxes(model, 1, 2, "coarse")[1].tolist() == [36, 0, 257, 221]


@pytest.mark.parametrize("conv_head", [True, False], ids=["conv-head", "fc-head"])
@pytest.mark.parametrize("stride", ["fine", "coarse"])
def test_every_dense_location_is_the_forward_pass_on_its_window(conv_head, stride):
    model = reinitialize(Tiny(conv_head), "kaiming").eval()
    # unpooled 14 x 17: every offset pools whole windows, so no location is cropped away
    images = torch.randn(2, 3, 65, 77)
    with torch.no_grad():
        dense = dense_map(model, images, stride)
        rows, cols = dense.shape[-2:]
        assert (rows, cols) == ((9, 12) if stride == "fine" else (3, 4))
        boxes = window_boxes(model, rows, cols, stride).int().tolist()
        crops = [images[..., y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]
        assert all(c.shape[-2:] == (33, 33) for c in crops)  # every window inside the image
        plain = model(torch.cat(crops)).view(len(boxes), 2, 5)  # (location, B, K)
        torch.testing.assert_close(dense.flatten(2).permute(2, 0, 1), plain, rtol=1e-5, atol=1e-6)
    assert dense.std() > 1e-2  # the locations differ: the check above is not vacuous


@pytest.mark.parametrize("stride", ["fine", "coarse"])
def test_window_crop_adds_the_context_padded_layers_read(stride):
    """A padded layer makes a bare window crop wrong near its edges; the crop widened by the
    receptive field (window_crop) and aligned to the stride grid gives every location exactly."""
    model = reinitialize(Tiny(conv_head=True, pad=1), "kaiming").eval()  # conv2 5x5, pad 1
    images = torch.randn(1, 3, 57, 61)
    step = window_step(model, stride)
    with torch.no_grad():
        dense = dense_map(model, images, stride)
        rows, cols = dense.shape[-2:]
        boxes = window_boxes(model, rows, cols, stride).int().tolist()
        bare = model(torch.cat([images[..., y0:y1, x0:x1] for x0, y0, x1, y1 in boxes]))
        exact = torch.cat(
            [window_logits(model, images, y, x, stride) for y in range(rows) for x in range(cols)]
        )
    assert (rows, cols) == ((6, 6) if stride == "fine" else (3, 3))
    flat = dense[0].flatten(1).T  # (location, K)
    torch.testing.assert_close(exact, flat, rtol=1e-5, atol=1e-6)
    assert (bare - flat).abs().max() > 1e-3  # the bare crops differ: context matters
    for (x0, y0, x1, y1), index in zip(boxes, range(rows * cols), strict=True):
        ys, xs, _, _ = window_crop(model, 57, 61, index // cols, index % cols, stride)
        assert ys.start % 4 == 0 and xs.start % 4 == 0  # on the unpooled grid (stride 4)
        assert ys.start <= y0 and ys.stop >= y1 and xs.start <= x0 and xs.stop >= x1
        assert ys.stop - ys.start <= 33 + 2 * 2 * 2 + step  # window + 2 cells of reach a side


@pytest.mark.parametrize("name", FAMILIES)
def test_dense_locations_equal_the_plain_network(name):
    """On an input_size image the coarse map is one location, the ordinary forward pass.
    On larger images a bare window crop differs near its edges (padded layers), but the crop
    with the context its receptive field reads (window_crop) reproduces every location."""
    model = live_model(name)
    single = torch.randn(1, 3, model.input_size, model.input_size)
    step = window_step(model, "fine")
    n = offset_count(model, "fine")  # the smallest fine map has n x n locations
    size = model.input_size + (n - 1) * step
    image = torch.randn(1, 3, size, size + 5)
    with torch.no_grad():
        plain = model(single)
        one = dense_map(model, single, "coarse")
        assert one.shape == (1, 5, 1, 1) and plain.std() > 1e-3
        torch.testing.assert_close(one[..., 0, 0], plain, rtol=1e-4, atol=1e-5)
        with pytest.raises(ConfigError, match="too small"):  # fine needs input_size + steps
            dense_map(model, single, "fine")
        dense = dense_map(model, image, "fine")
        assert dense.shape[-2:] == (n, n)
        for y, x in ((0, n - 1), (n - 1, 0)):  # offsets (0, n-1) and (n-1, 0), both edges
            reference = window_logits(model, image, y, x, "fine")
            torch.testing.assert_close(dense[..., y, x], reference, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- the paper table
TABLE = [  # O Table 5 / PAPERS.md §3.3: input, layer-5 pre-pool, pooled per offset, output
    ((245, 245), (17, 17), (5, 5), (3, 3)),
    ((281, 317), (20, 23), (6, 7), (6, 9)),
    ((317, 389), (23, 29), (7, 9), (9, 15)),
    ((389, 461), (29, 35), (9, 11), (15, 21)),
    ((425, 497), (32, 38), (10, 12), (18, 24)),
    ((461, 569), (35, 44), (11, 14), (21, 30)),
]


def test_accurate_model_map_sizes_match_the_paper_table():
    assert [row[0] for row in TABLE] == list(PAPER_TABLE_SIZES)
    with torch.device("meta"):
        model = create_model("overfeat_accurate", num_classes=1000).eval()
        for size, prepool, pooled, output in TABLE:
            images = torch.empty(1, 3, *size)
            unpooled = model.forward_features(images, pool=False)
            assert tuple(unpooled.shape[-2:]) == prepool
            offsets = offset_pool(model, unpooled, "fine")
            assert tuple(offsets.shape) == (9, 1, 1024, *pooled)
            assert tuple(dense_map(model, images, "fine").shape) == (1, 1000, *output)
            coarse = tuple(dense_map(model, images, "coarse").shape[-2:])
            assert coarse == (pooled[0] - 4, pooled[1] - 4)
    for size, _, _, output in TABLE:  # every location is a whole 221 window inside the image
        x0, y0, x1, y1 = window_boxes(model, *output, "fine")[-1].tolist()
        assert (x1 <= size[1] < x1 + 12) and (y1 <= size[0] < y1 + 12)  # ... up to the edge


# --------------------------------------------------------------------------- scores
def test_dense_scores_average_spatial_max_softmax_over_scales_and_flips():
    model = reinitialize(Tiny(conv_head=True), "kaiming").eval()

    def resize(image, size):
        return F.interpolate(image, size=size, mode="bilinear", antialias=True)

    image = torch.randn(3, 40, 52)
    with torch.no_grad():
        single = dense_scores(model, image, [(33, 33)], stride="coarse", flip=False)
        plain = model(resize(image[None], (33, 33))).softmax(1)[0]  # rescaled, not cropped
        torch.testing.assert_close(single, plain, rtol=1e-5, atol=1e-7)
        scales = [(45, 45), 65]
        both = dense_scores(model, image, scales, stride="fine", flip=True)
        parts = []
        for scale in scales:
            scaled = resize(image[None], scaled_size(40, 52, scale))
            for view in (scaled, scaled.flip(-1)):
                parts.append(dense_map(model, view, "fine").softmax(1).amax(dim=(-2, -1))[0])
    assert len({tuple(p.tolist()) for p in parts}) == 4  # four different views
    torch.testing.assert_close(both, torch.stack(parts).mean(0), rtol=1e-5, atol=1e-7)
    assert both.shape == (5,) and float(both.sum()) >= 1 - 1e-5  # maxima sum to >= 1


def test_scaled_size_and_parse_scales():
    assert scaled_size(300, 400, 245) == (245, 327)
    assert scaled_size(400, 300, (281, 317)) == (281, 317)
    assert parse_scales("paper") == list(PAPER_SCALES)
    assert parse_scales("paper-table") == list(PAPER_TABLE_SIZES)
    assert parse_scales("245, 281x317") == [245, (281, 317)]
    for bad in ("", "big", "1x2x3", "0"):
        with pytest.raises(ConfigError, match="--scales"):
            parse_scales(bad)


# --------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, ray_session):
    """Raw tree -> whole-image shards (--no-crop --size 260) and a fake AlexNet run on them."""
    from convplat.config import PrepareConfig
    from convplat.pipeline import prepare
    from convplat.training.checkpoints import state_dict_bytes

    root = tmp_path_factory.mktemp("raw")
    make_imagenet_tree(
        root, classes=3, train_per_class=1, val_per_class=2, quirks=False, size=(300, 260)
    )
    shards = tmp_path_factory.mktemp("shards")
    config = PrepareConfig(source=str(root), out=str(shards), size=260, crop=False, shard_size=4)
    prepare(dataclasses.replace(config, progress=False))
    run = tmp_path_factory.mktemp("run")
    model = live_model("alexnet", num_classes=3)
    (run / "model.safetensors").write_bytes(state_dict_bytes(model))
    config = {"model": "alexnet", "num_classes": 3, "data": str(shards), "input_scale": 1 / 64}
    (run / "config.json").write_text(json.dumps(config))
    return run, model, root


def test_evaluate_dense_from_the_raw_tree_and_from_whole_image_shards(dense_run):
    from convplat.training import evaluate

    run, _, root = dense_run
    raw = evaluate(str(run), mode="dense", scales="240,256x300", progress=False)
    assert raw["count"] == 6 and raw["skipped"] == 0 and raw["top5_err"] == 0  # 3 classes
    assert 0 <= raw["top1_err"] <= 1 and raw["scales"] == [240, [256, 300]]
    assert raw["stride"] == "fine" and raw["flip"] is True
    saved = json.loads((Path(run) / "eval-dense-val.json").read_text())
    assert saved["top1_err"] == raw["top1_err"] and Path(saved["source"]) == root
    shards = evaluate(
        str(run), mode="dense", source="shards", scales="240", stride="coarse", flip=False
    )
    assert shards["count"] == 6 and shards["source"] == saved["data"]
    with pytest.raises(ConfigError, match="--no-crop --size 461"):  # 260 < the paper's 461
        evaluate(str(run), mode="dense", source="shards", progress=False)
    with pytest.raises(ConfigError, match="--stride"):
        evaluate(str(run), mode="dense", stride="medium", progress=False)
    with pytest.raises(ConfigError, match="--source"):
        evaluate(str(run), mode="dense", source="nowhere", progress=False)


def test_evaluate_dense_scores_match_the_library_per_image(dense_run):
    """The evaluation's top-1 equals dense_scores on each raw image normalised by hand."""
    from convplat.pipeline.image import decode_rgb
    from convplat.pipeline.readers import read_dataset
    from convplat.pipeline.shardset import load_stats, read_manifest
    from convplat.training import evaluate

    run, model, _ = dense_run
    config = json.loads((Path(run) / "config.json").read_text())
    manifest = read_manifest(config["data"])
    mean = torch.as_tensor(load_stats(config["data"])["rgb_mean"], dtype=torch.float32)
    listing = read_dataset(manifest["source"])
    correct = 0
    for item in (i for i in listing.items if i.split == "val"):
        pixels, _, _ = decode_rgb(Path(item.path).read_bytes(), 240)
        image = (torch.from_numpy(pixels).permute(2, 0, 1).float() - mean.view(3, 1, 1)) / 64
        scores = dense_scores(model, image, [240], stride="coarse", flip=False)
        correct += int(scores.argmax()) == item.label
    result = evaluate(str(run), mode="dense", scales="240", stride="coarse", flip=False)
    assert result["top1_err"] == pytest.approx(1 - correct / 6)


def test_cli_evaluate_dense(dense_run, capsys):
    from convplat.cli.main import main

    run, _, _ = dense_run
    args = ["evaluate", str(run), "--mode", "dense", "--scales", "240", "--stride", "coarse"]
    assert main([*args, "--no-flip"]) == 0
    assert "(dense, val, 6 images): top-1 error" in capsys.readouterr().out
    assert main([*args[:-1], "medium"]) == 2  # a user mistake: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--stride: expected one of fine, coarse" in err[0]
