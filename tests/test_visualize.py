"""convplat.visualize: deconvnet against a modified gradient, switches, occlusion, PNGs."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convplat.training.models import create_model
from convplat.training.models.layers import LocalResponseNorm
from convplat.visualize import deconv_project, filters_png, occlusion, occlusion_png
from convplat.visualize.deconv import forward_with_switches, unpool


class Tiny(nn.Module):
    """The ConvNet contract in miniature: ``features``, a linear head on the pooled maps."""

    def __init__(self, features: nn.Sequential, classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    @property
    def final_pool(self) -> nn.Module:
        return self.features[-1]

    def forward_features(self, images, pool=True):
        return (self.features if pool else self.features[:-1])(images)

    def forward_head(self, x):
        return self.classifier(torch.flatten(x, 1))


def stack(kind: str) -> nn.Sequential:
    if kind == "overlap-ceil":  # ZFNet-like: strided convs, 3/2 ceil pools, odd sizes
        return nn.Sequential(
            nn.Conv2d(3, 6, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(6, 8, 3, stride=2),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(8, 4, 3, padding=1),
            nn.ReLU(),
        )
    return nn.Sequential(  # grouped, floor pools, non-overlapping 2/2 pool
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(6, 4, 3, groups=2),
        nn.ReLU(),
    )


class _RectifiedBackward(torch.autograd.Function):
    """ReLU forward; backward = ReLU of the incoming signal (the deconvnet's rectification)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


def modified_gradient(features, image, top, channel, y, x, lrn_identity=False):
    """d activation / d input with every ReLU's backward replaced by ReLU(grad) (and, with
    ``lrn_identity``, LRN's forward value but an identity backward)."""
    inp = image[None].clone().requires_grad_(True)
    h = inp
    for module in features[: top + 1]:
        if isinstance(module, nn.ReLU):
            h = _RectifiedBackward.apply(h)
        elif lrn_identity and isinstance(module, LocalResponseNorm):
            h = h + (module(h) - h).detach()
        else:
            h = module(h)
    act = h[0, channel, y, x]
    act.backward()
    return act.detach(), inp.grad[0]


@pytest.mark.parametrize("kind", ["overlap-ceil", "grouped"])
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_deconv_equals_rectified_gradient(kind, layer):
    torch.manual_seed(layer)
    model = Tiny(stack(kind)).double()
    image = torch.randn(3, 29, 31, dtype=torch.float64)
    top = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)][layer - 1] + 1
    acts, _, _ = forward_with_switches(model, image[None], top)
    channel = int(acts[0].amax(dim=(1, 2)).argmax())  # a live map
    flat = int(acts[0, channel].argmax())
    y, x = divmod(flat, acts.shape[-1])
    assert acts[0, channel, y, x] > 0
    proj = deconv_project(model, image, layer, channel, y, x)
    act, grad = modified_gradient(model.features, image, top, channel, y, x)
    assert proj.shape == image.shape
    assert proj.abs().sum() > 0
    torch.testing.assert_close(proj, act * grad, rtol=1e-10, atol=1e-12)


def test_deconv_skips_lrn():
    """LRN's forward sets the switches; on the way down it is the identity (ZFNet §2.1)."""
    torch.manual_seed(0)
    features = stack("overlap-ceil")
    features.insert(3, LocalResponseNorm(5, 0.5, 0.75, 1.0))  # strong, so skipping matters
    model = Tiny(features).double()
    image = torch.randn(3, 29, 31, dtype=torch.float64)
    top = 5  # the ReLU after conv2, above the LRN
    acts, _, _ = forward_with_switches(model, image[None], top)
    channel = int(acts[0].amax(dim=(1, 2)).argmax())
    y, x = divmod(int(acts[0, channel].argmax()), acts.shape[-1])
    proj = deconv_project(model, image, 2, channel, y, x)
    act, grad = modified_gradient(model.features, image, top, channel, y, x, lrn_identity=True)
    torch.testing.assert_close(proj, act * grad, rtol=1e-10, atol=1e-12)
    _, plain = modified_gradient(model.features, image, top, channel, y, x)
    assert not torch.allclose(act * plain, proj)  # the true LRN backward differs


@pytest.mark.parametrize("ceil", [True, False])
def test_switches_exact(ceil):
    torch.manual_seed(0)
    pool = nn.MaxPool2d(3, 2, ceil_mode=ceil)
    model = Tiny(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), pool))
    image = torch.randn(3, 16, 16)
    out, switches, sizes = forward_with_switches(model, image[None], 2)
    relu = model.features[:2](image[None])
    torch.testing.assert_close(out, pool(relu), rtol=0, atol=0)  # the module's own maps
    idx = switches[2]
    # each switch points at the input cell holding that pooled max, inside its window
    gathered = relu.flatten(2).gather(2, idx.flatten(2)).view_as(out)
    torch.testing.assert_close(gathered, out, rtol=0, atol=0)
    rows, cols = idx // relu.shape[-1], idx % relu.shape[-1]
    oy = torch.arange(out.shape[-2]).view(-1, 1) * 2
    ox = torch.arange(out.shape[-1]).view(1, -1) * 2
    assert ((rows >= oy) & (rows < oy + 3) & (cols >= ox) & (cols < ox + 3)).all()
    # unpool puts each pooled value back at its switch (summing shared switches)
    back = unpool(out, idx, sizes[2])
    expected = torch.zeros_like(relu).flatten(2).scatter_add_(2, idx.flatten(2), out.flatten(2))
    torch.testing.assert_close(back, expected.view_as(relu), rtol=0, atol=0)
    assert back.shape == relu.shape
    # switches match autograd's max-pool (so the gradient check above tests the same routing)
    _, ref = F.max_pool2d(relu, 3, 2, ceil_mode=ceil, return_indices=True)
    assert torch.equal(ref, idx)


@pytest.mark.parametrize("name", ["zfnet", "alexnet"])
def test_deconv_on_real_models(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    size = model.input_size
    image = torch.randn(3, size, size)
    for layer in (1, 5):
        proj = deconv_project(model, image, layer, 3, 2, 2)
        assert proj.shape == (3, size, size)
        assert torch.isfinite(proj).all()
    with pytest.raises(ValueError, match="layer in 1..5"):
        deconv_project(model, image, 6, 0, 0, 0)


def corner_model() -> Tiny:
    """Two classes; class 1's logit is the sum of the top-left 8x8 corner of channel 0."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 1.0  # channel 0 = relu(red)
        conv.weight[1, 1] = 1.0  # channel 1 = relu(green), irrelevant to the class
    features = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(1, 1))
    head = nn.Linear(2 * 32 * 32, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        w = torch.zeros(2, 32, 32)
        w[0, :8, :8] = 1.0
        head.weight[1] = w.flatten()
    return Tiny(features, head).eval()


def test_occlusion_known_answer():
    image = torch.zeros(3, 32, 32)
    image[0, :8, :8] = 1.0  # the class evidence: the top-left corner (logit 64)
    image[1] = 0.01  # a weak, uniform second map
    maps = occlusion(corner_model(), image, label=1, size=8, stride=8, batch_size=3)
    assert maps["prob"].shape == (4, 4) and maps["target"] == 1
    prob = maps["prob"]
    assert prob[0, 0] == pytest.approx(0.5)  # covered: logits (0, 0)
    others = np.delete(prob.flatten(), 0)
    assert np.all(others > 0.999)
    assert maps["label"][0, 0] == 0 and (np.delete(maps["label"].flatten(), 0) == 1).all()
    assert maps["channel"] == 0  # the strongest map on the unoccluded image
    feature = maps["feature"]
    assert feature[0, 0] == pytest.approx(0.0)
    assert np.allclose(np.delete(feature.flatten(), 0), 64.0)
    # batched and one-at-a-time give the same maps
    single = occlusion(corner_model(), image, label=1, size=8, stride=8, batch_size=1)
    for key in ("prob", "feature", "label"):
        np.testing.assert_allclose(single[key], maps[key], rtol=1e-6)
    default = occlusion(corner_model(), image, size=8, stride=4)
    assert default["target"] == 1 and default["prob"].shape == (7, 7)


def test_box_drops_split_positions_by_the_object_box():
    from convplat.visualize.occlusion import box_drops

    image = torch.zeros(3, 32, 32)
    image[0, :8, :8] = 1.0
    maps = occlusion(corner_model(), image, label=1, size=8, stride=4)  # tops/lefts 0, 4, …, 24
    clean = 1 / (1 + math.exp(-64))
    inside, outside = box_drops(maps, clean, [(0, 0, 8, 8)])
    # Centres (4, 4), (4, 8), (8, 4) and (8, 8) lie in the box; only the square at (0, 0)
    # hides the whole corner (p = 1/2); the others leave a logit of 16 or 32 (p ~ 1).
    assert len(inside) == 4 and max(inside) == pytest.approx(clean - 0.5)
    assert np.allclose(sorted(inside)[:3], 0, atol=1e-6)
    assert len(outside) == 49 - 4  # the squares at 0 and 4 on both axes touch the box
    assert np.allclose(outside, 0, atol=1e-9)
    both, _ = box_drops(maps, clean, [(0, 0, 8, 8), (24, 24, 32, 32)])
    assert len(both) == 8


def test_occlusion_rejects_bad_arguments():
    with pytest.raises(ValueError, match="occluder size"):
        occlusion(corner_model(), torch.zeros(3, 32, 32), size=40)
    with pytest.raises(ValueError, match="shape"):
        occlusion(corner_model(), torch.zeros(32, 32))


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_filters_png_grid():
    torch.manual_seed(0)
    model = Tiny(nn.Sequential(nn.Conv2d(3, 10, 5), nn.ReLU(), nn.MaxPool2d(2)))
    rgb = decode(filters_png(model, scale=2))
    # 10 filters -> 4 columns x 3 rows of 5x5 cells with 1-pixel borders, scaled x2
    assert rgb.shape == (2 * (3 * 6 + 1), 2 * (4 * 6 + 1), 3)
    cell = rgb[2:12, 2:12]  # first filter, min-max normalised: spans 0..255
    assert cell.min() == 0 and cell.max() == 255
    assert rgb.std() > 10


def test_occlusion_png_not_blank():
    image = torch.zeros(3, 32, 32)
    image[0, :8, :8] = 1.0
    maps = occlusion(corner_model(), image, label=1, size=8, stride=4)
    rgb = decode(occlusion_png(image, maps, dpi=40))
    assert rgb.shape[1] > rgb.shape[0] * 2  # four panels side by side
    assert rgb.std() > 10


def tiny_run(tmp_path, name: str = "zfnet"):
    """A run directory as `convplat train` leaves it, with random weights and made-up stats."""
    from convplat.training.checkpoints import state_dict_bytes

    model = create_model(name, num_classes=4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(state_dict_bytes(model))
    data = tmp_path / "shards"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(
        data / "stats.npz",
        mean=np.full((256, 256, 3), 120, np.float32),
        rgb_mean=np.full(3, 120, np.float32),
        eigval=np.ones(3, np.float32),
        eigvec=np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32),
    )
    config = {"model": name, "num_classes": 4, "data": str(data), "input_scale": 0.02}
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny ZFNet run shared by the command tests (building the net is the slow part)."""
    return tiny_run(tmp_path_factory.mktemp("visualize"))


def test_run_pictures_write_pngs(tmp_path, run_dir):
    from conftest import jpeg_bytes

    from convplat.visualize.runs import preprocess, run_filters, run_occlusion

    run = run_dir
    path = run_filters(str(run))
    assert path.endswith("visualize/filters.png")
    assert decode(open(path, "rb").read()).shape == (4 * (10 * 8 + 1), 4 * (10 * 8 + 1), 3)

    photo = tmp_path / "cat.jpg"
    photo.write_bytes(jpeg_bytes(300, 260, seed=1))
    config = json.loads((run / "config.json").read_text())
    image = preprocess(photo.read_bytes(), config, 224)
    assert image.shape == (3, 224, 224)
    assert image.abs().max() <= 0.02 * 255 + 1e-4  # mean-subtracted and scaled
    path = run_occlusion(str(run), str(photo), size=64, stride=80, label=2)
    assert path.endswith("visualize/occlusion-cat.png")
    assert decode(open(path, "rb").read()).std() > 10


def test_run_on_a_uri_writes_beside_it_and_keeps_the_scheme(run_dir):
    """A run given as a URI (file:// standing in for s3:// or gs://) gets its pictures in
    ``<run>/visualize`` on the same filesystem, and the returned path is a URI of it."""
    from convplat.visualize.runs import run_filters

    uri = run_dir.as_uri()
    path = run_filters(uri)
    assert path == f"{uri}/visualize/filters.png"
    assert (run_dir / "visualize" / "filters.png").is_file()


@pytest.mark.parametrize("out", ["a-file", "a-file/below", "/proc/convplat-visualize"])
def test_an_out_that_cannot_be_written_is_one_line(tmp_path, run_dir, capsys, out):
    from convplat.cli.main import main

    (tmp_path / "a-file").write_text("not a directory")
    code = main(["visualize", "filters", str(run_dir), "--out", str(tmp_path / out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write " in err[0] and "filters.png" in err[0], err


@pytest.mark.parametrize("content", [b"hello", b"\xff\xd8\xff\xe0 a cut JPEG"])
def test_occlusion_of_a_file_that_is_not_an_image_is_one_line(tmp_path, run_dir, capsys, content):
    from convplat.cli.main import main

    (tmp_path / "photo.jpg").write_bytes(content)
    assert main(["visualize", "occlusion", str(run_dir), str(tmp_path / "photo.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "photo.jpg: " in err[0] and "expected an image file" in err[0], err


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--size", "0"], "--size: expected 1..224"),
        (["--size", "225"], "--size: expected 1..224"),
        (["--stride", "0"], "--stride: expected >= 1, got 0"),
        (["--stride", "-8"], "--stride: expected >= 1, got -8"),
    ],
)
def test_occlusion_square_out_of_range_is_one_line(tmp_path, run_dir, capsys, flags, expected):
    from conftest import jpeg_bytes

    from convplat.cli.main import main

    (tmp_path / "cat.jpg").write_bytes(jpeg_bytes(64, 64, seed=1))
    assert main(["visualize", "occlusion", str(run_dir), str(tmp_path / "cat.jpg"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_top_activations_match_brute_force():
    from convplat.visualize.top import top_activations

    torch.manual_seed(0)
    model = Tiny(stack("overlap-ceil")).eval()
    images = torch.randn(13, 3, 29, 31)
    tops = top_activations(model, images.split(4), 2, [0, 3], k=5)
    with torch.no_grad():
        maps = model.features[:5](images)  # ReLU after conv2
    for c in (0, 3):
        best = maps[:, c].flatten(1).max(dim=1).values
        expected = best.sort(descending=True).values[:5]
        got = torch.tensor([a.value for a in tops[c]])
        torch.testing.assert_close(got, expected)
        for act in tops[c]:  # each keeps its image and the position of the max
            n = int((images - act.image).abs().flatten(1).sum(1).argmin())
            assert maps[n, c, act.y, act.x] == pytest.approx(act.value)


def test_receptive_field_zfnet():
    from convplat.visualize.top import field_box, receptive_field

    model = create_model("zfnet", num_classes=10)
    assert receptive_field(model, 1) == (7, 2, 2.0)  # conv1 7x7/2, padding 1
    size, jump, _ = receptive_field(model, 2)
    assert (size, jump) == (7 + 2 * 2 + 4 * 4, 8)  # + pool 3/2, conv2 5/2
    top, left, side = field_box(model, 5, 0, 12, 224)
    assert top == 0 and left + side == 224 and side <= 224


def test_deconv_figure_grid():
    from convplat.visualize.plots import deconv_figure
    from convplat.visualize.top import top_activations

    torch.manual_seed(0)
    model = Tiny(stack("overlap-ceil")).eval()
    images = torch.randn(12, 3, 29, 29)
    tops = top_activations(model, [images], 2, [0, 1], k=9)
    figure = deconv_figure(model, tops, 2, gap=4)
    from convplat.visualize.top import receptive_field

    side = min(receptive_field(model, 2)[0], 29)
    cell = 3 * (side + 1) + 1
    assert figure.shape == (2 * cell + 4, 2 * cell + 4, 3)
    assert figure[:cell, :cell].std() > 10 and figure[:cell, cell + 4 :].std() > 10


def test_run_deconv_with_stub_loader(run_dir, monkeypatch, tmp_path):
    import convplat.training.data as data
    from convplat.visualize.runs import run_deconv

    def fake_eval_loader(shard_dir, split, *, batch_size, crop_size, mode, keys, **_):
        assert split == "val" and mode == "center" and keys
        rng = np.random.default_rng(0)
        for _ in range(1):
            images = rng.integers(0, 256, (batch_size, crop_size, crop_size, 3), np.uint8)
            windows = torch.tensor([[16, 16, 0]] * batch_size)
            names = [f"s{i}" for i in range(batch_size)]
            yield torch.from_numpy(images), torch.zeros(batch_size), windows, names

    monkeypatch.setattr(data, "eval_loader", fake_eval_loader)
    run = run_dir
    config = json.loads((run / "config.json").read_text())
    val = {"count": 3, "shards": [{"name": "val-000000.tar", "count": 3}]}
    manifest = {"size": 256, "splits": {"val": val}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "stats.npz").write_bytes((run.parent / "shards/stats.npz").read_bytes())
    assert config["data"] == str(run.parent / "shards")
    path = run_deconv(str(run), 2, maps=[7], batch_size=3, data=str(tmp_path), executor="local")
    assert path.endswith("visualize/deconv-layer2.png")
    assert decode(open(path, "rb").read()).std() > 10


def test_run_evolution_over_checkpoints(run_dir, monkeypatch):
    import convplat.training.data as data
    from convplat.visualize.runs import epoch_checkpoints, run_evolution

    def fake_eval_loader(shard_dir, split, *, batch_size, crop_size, mode, **_):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (2, crop_size, crop_size, 3), np.uint8)
        yield torch.from_numpy(images), torch.zeros(2), torch.tensor([[16, 16, 0]] * 2)

    monkeypatch.setattr(data, "eval_loader", fake_eval_loader)
    run = run_dir
    weights = (run / "model.safetensors").read_bytes()
    for epoch in (1, 3):  # epoch-002 is incomplete (no weights): skipped
        (run / f"checkpoints/epoch-{epoch:03d}").mkdir(parents=True)
        (run / f"checkpoints/epoch-{epoch:03d}/model.safetensors").write_bytes(weights)
    (run / "checkpoints/epoch-002").mkdir()
    assert [e for e, _ in epoch_checkpoints(str(run))] == [1, 3]
    path = run_evolution(str(run), 1, maps=[0, 5], batch_size=2)
    rgb = decode(open(path, "rb").read())
    side = 7  # conv1's receptive field
    assert rgb.shape == (2 * (2 * (side + 1) + 1), 2 * (2 * (side + 1) + 1), 3)
    assert rgb.std() > 10


# --- incremental occlusion ----------------------------------------------------------------


def padded_stack() -> nn.Sequential:
    """Padding, dilation, a padded pool, LRN and a strided conv: every case the windows meet."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, stride=2, padding=2),
        nn.ReLU(),
        LocalResponseNorm(3, 0.5, 0.75, 1.0),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(6, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1, groups=2),
        nn.ReLU(),
    )


@pytest.mark.parametrize("kind", ["overlap-ceil", "grouped", "padded"])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 2.0])  # full maps at once, midway, never
def test_incremental_features_equal_full_passes(kind, fraction):
    from convplat.visualize.incremental import IncrementalFeatures

    torch.manual_seed(0)
    layers = (padded_stack() if kind == "padded" else stack(kind)).double().eval()
    image = torch.randn(3, 45, 49, dtype=torch.float64)
    side = 8
    rects = np.array([(t, left, side, side) for t in (0, 9, 20, 37) for left in (0, 13, 41)])
    fill = torch.randn(len(rects), 3, side, side, dtype=torch.float64)  # not just grey
    features = IncrementalFeatures(layers, image, rects, full_fraction=fraction)
    index = np.array([0, 5, 6, 11, 2, 7])
    got = features(index, fill[index])
    batch = image[None].repeat(len(index), 1, 1, 1)
    for n, i in enumerate(index):
        t, left = rects[i, :2]
        batch[n, :, t : t + side, left : left + side] = fill[i]
    with torch.no_grad():
        expected = layers(batch)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert (expected - expected[:1]).abs().amax() > 0.01  # the squares change the maps
    if fraction == 2.0:  # really windowed all the way, the first window a small part
        (h, w), area = features.plan[0][0], features.inputs[1][0, 0].numel()
        assert features.full_from == len(layers) and h * w < area / 4


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_occlusion_incremental_equals_plain_batches(name):
    from convplat.visualize.incremental import IncrementalFeatures

    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    image = torch.randn(3, 224, 224)
    fast = occlusion(model, image, size=32, stride=64, batch_size=8)  # 16 positions
    plain = occlusion(model, image, size=32, stride=64, batch_size=8, incremental=False)
    for key in ("prob", "feature"):
        scale = np.abs(plain[key]).max()
        np.testing.assert_allclose(fast[key], plain[key], rtol=0, atol=1e-4 * scale)
    assert (fast["label"] == plain["label"]).all() and fast["channel"] == plain["channel"]
    assert np.ptp(plain["feature"]) > 0  # the square matters
    rects = np.array([(t, left, 32, 32) for t in fast["tops"] for left in fast["lefts"]])
    windows = IncrementalFeatures(model.features[:-1], image, rects)
    assert windows.full_from > 4  # conv1 and conv2 (at least) run on windows only


# --- the top-9 search over shards, in process and over Ray ---------------------------------


def write_val_shards(root, counts: list[int], size: int = 40):
    """Validation shards as `convplat prepare` lays them out (random photos; the first image
    repeated as the last, in another shard, so two samples tie on every map)."""
    import simplejpeg
    import webdataset as wds

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    total = sum(counts)
    photos = [rng.integers(0, 256, (size, size, 3), np.uint8) for _ in range(total - 1)]
    photos.append(photos[0])
    shards, n = [], 0
    for index, count in enumerate(counts):
        name = f"val-{index:06d}.tar"
        with wds.TarWriter(str(root / name)) as sink:
            for _ in range(count):
                jpeg = simplejpeg.encode_jpeg(photos[n], quality=100)
                sink.write({"__key__": f"img{n:03d}", "jpg": jpeg, "cls": b"0"})
                n += 1
        shards.append({"name": name, "count": count})
    splits = {"val": {"count": total, "shards": shards}}
    manifest = {"format_version": 1, "size": size, "crop": True, "splits": splits}
    (root / "manifest.json").write_text(json.dumps(manifest))
    np.savez(
        root / "stats.npz",
        mean=np.full((size, size, 3), 120, np.float32),
        rgb_mean=np.full(3, 120, np.float32),
        eigval=np.ones(3, np.float32),
        eigvec=np.eye(3, dtype=np.float32),
    )
    return root


def test_search_shards_ray_equals_local(ray_session, tmp_path):
    from convplat.errors import ConfigError
    from convplat.visualize.search import search_part, search_shards

    shards = str(write_val_shards(tmp_path / "shards", [3, 4, 2, 3]))
    torch.manual_seed(0)
    model = Tiny(stack("overlap-ceil")).eval()
    model.input_size = 33
    run = dict(input_scale=0.02, k=4, batch_size=3)
    local, used = search_shards(model, 2, [0, 3, 5], shards, executor="local", **run)
    assert used == "local"
    fanned, used = search_shards(model, 2, [0, 3, 5], shards, executor="ray", **run)
    assert used == "ray"
    for c in (0, 3, 5):
        assert [(a.order, a.y, a.x) for a in fanned[c]] == [(a.order, a.y, a.x) for a in local[c]]
        torch.testing.assert_close(
            torch.tensor([a.value for a in fanned[c]]), torch.tensor([a.value for a in local[c]])
        )
        for a, b in zip(fanned[c], local[c], strict=True):
            assert torch.equal(a.image, b.image)
    values = [a.value for a in local[0]]
    assert len(values) == 4 and values == sorted(values, reverse=True)
    every = dict(run, k=12)  # k >= images: each rank's share, and together every image once
    parts = [
        search_part(model.features[:5], shards, [0], size=33, rank=r, world_size=3, **every)
        for r in range(3)
    ]
    keys = sorted(a.order for p in parts for a in p[0])
    assert keys == [f"img{n:03d}" for n in range(12)]
    assert all(parts)
    _, used = search_shards(model, 2, [0], shards, executor="auto", ray_min_images=12, **run)
    assert used == "ray"
    _, used = search_shards(model, 2, [0], shards, executor="auto", ray_min_images=13, **run)
    assert used == "local"
    with pytest.raises(ConfigError, match="--executor"):
        search_shards(model, 2, [0], shards, executor="spark")


def test_top_ties_break_by_key_in_any_order():
    from convplat.visualize.top import merge_tops, top_of_maps

    torch.manual_seed(0)
    layers = stack("overlap-ceil")[:5].eval()
    images = torch.randn(4, 3, 29, 31)
    images[3] = images[0]  # "d" ties "a" on every map
    keys = ["a", "b", "c", "d"]
    forward = top_of_maps(layers, [(images, keys)], [0, 1], k=2)
    backward = top_of_maps(layers, [(images.flip(0), keys[::-1])], [0, 1], k=2)
    split = merge_tops(
        [
            top_of_maps(layers, [(images[:2], keys[:2])], [0, 1], k=2),
            top_of_maps(layers, [(images[2:], keys[2:])], [0, 1], k=2),
        ],
        k=2,
    )
    for c in (0, 1):
        assert [a.order for a in forward[c]] == [a.order for a in backward[c]]
        assert [a.order for a in forward[c]] == [a.order for a in split[c]]
        ranked = [a.order for a in top_of_maps(layers, [(images, keys)], [c], k=4)[c]]
        assert ranked.index("d") == ranked.index("a") - 1  # equal values: the larger key first
    # without keys the first seen wins the tie
    plain = top_of_maps(layers, [images], [0], k=4)[0]
    first = [a.order for a in plain]
    assert first.index(0) == first.index(-3) - 1


def test_deconv_command_rejects_an_unknown_executor(run_dir, capsys):
    from convplat.cli.main import main

    code = main(["visualize", "deconv", str(run_dir), "--layer", "2", "--executor", "spark"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--executor: expected one of auto, local, ray" in err[0]


def test_summarize_drops_needs_a_real_paired_drop_not_only_a_ratio():
    from convplat.visualize.occlusion import box_drops, summarize_drops

    # A saturated network: the square on the object costs 0.02, off it nothing or a gain.
    saturated = [(np.array([0.02, 0.01, 0.03]), np.array([0.0, -0.001, 0.0]))] * 4
    summary = summarize_drops(saturated)
    assert summary.ratio == float("inf") and summary.covers == pytest.approx(0.02)
    assert summary.paired == 0.0
    missed = summary.shortfalls(3.0, 0.1, 0.5)
    assert len(missed) == 2 and "covering drop 0.0200 < 0.1" in missed[0]
    # Looking at the object: large covering drops, small off-box ones, in 3 of 4 images.
    looking = [(np.array([0.5, 0.1]), np.array([0.05, 0.0]))] * 3
    looking.append((np.array([0.05]), np.array([0.04])))  # this image: no paired drop
    summary = summarize_drops(looking)
    assert summary.covers == pytest.approx((3 * 0.3 + 0.05) / 4)
    assert summary.off == pytest.approx((3 * 0.025 + 0.04) / 4)
    assert summary.ratio == pytest.approx(summary.covers / summary.off)
    assert summary.paired == 0.75 and summary.shortfalls(3.0, 0.1, 0.5) == []
    assert summary.shortfalls(3.0, 0.1, 0.8) == ["paired share 75% < 80%"]
    # Using the background: the same drop on and off the box fails the ratio and the pairing.
    background = summarize_drops([(np.array([0.3]), np.array([0.3]))])
    assert background.ratio == pytest.approx(1.0) and background.paired == 0.0
    assert "ratio 1.00x < 3x" in background.shortfalls(3.0, 0.1, 0.5)
    # No drop anywhere: an undefined ratio misses; images with an empty side are left out.
    flat = summarize_drops([(np.zeros(2), np.zeros(3)), (np.zeros(0), np.ones(2))])
    assert flat.images == 1 and math.isnan(flat.ratio)
    assert flat.shortfalls(3.0, 0.0, 0.0) == ["ratio undefined (no drop) < 3x"]
    with pytest.raises(ValueError, match="at least one image"):
        summarize_drops([(np.zeros(0), np.zeros(2))])

    # End to end on occlusion maps: the corner model loses the class where the square hides
    # the object's corner, nowhere else.
    image = torch.zeros(3, 32, 32)
    image[0, :8, :8] = 1.0
    maps = occlusion(corner_model(), image, label=1, size=8, stride=4)
    clean = 1 / (1 + math.exp(-64))
    summary = summarize_drops([box_drops(maps, clean, [(0, 0, 8, 8)])])
    assert summary.covers == pytest.approx((clean - 0.5) / 4, rel=1e-4)
    assert summary.paired == 1.0 and summary.off == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize(("name", "what"), [("photos", "a directory"), ("gone.jpg", "no such")])
def test_occlusion_of_a_directory_or_nothing_says_which(tmp_path, run_dir, capsys, name, what):
    from convplat.cli.main import main

    (tmp_path / "photos").mkdir()
    assert main(["visualize", "occlusion", str(run_dir), str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"expected an image file, got '{tmp_path / name}' ({what}" in err[0]
