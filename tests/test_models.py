"""The registry and the five networks against the numbers in PAPERS.md (§1.1, §2.1, §3.1, §3.3)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from convplat.errors import ConfigError, UnknownModelError
from convplat.training.models import (
    ConvNet,
    LocalResponseNorm,
    create_model,
    describe_models,
    list_models,
    model_info,
    register_model,
    renormalize_filters,
)
from convplat.training.models.layers import conv_windows
from convplat.training.models.variants import VARIANTS, variant_names

# The published nets; ZFNet Table 3's ablations (alexnet_*, zfnet_* variants) are tested below.
NAMES = ["alexnet", "alexnet_1col", "overfeat_accurate", "overfeat_fast", "zfnet"]

# PAPERS.md ⚙ values (1000 classes; MACs per image at input_size, conv + fc).
PARAMS = {
    "alexnet": 60_965_224,
    "alexnet_1col": 62_378_344,
    "zfnet": 62_357_608,
    "overfeat_fast": 145_920_872,
    "overfeat_accurate": 144_656_488,
}
MACS = {
    "alexnet": 724_406_816,  # the 227-unpadded count; 224 + pad 2 gives the same 55x55 map
    "alexnet_1col": 1_135_256_096,
    "zfnet": 1_168_032_896,
    "overfeat_fast": 2_801_403_904,
    "overfeat_accurate": 5_355_446_784,
}
INPUT = {"alexnet": 224, "alexnet_1col": 224, "zfnet": 224, "overfeat_fast": 231}
INPUT["overfeat_accurate"] = 221

# (channels, side) after every conv and max-pool in `features`, at input_size.
_ALEX = [(96, 55), (96, 27), (256, 27), (256, 13), (384, 13), (384, 13), (256, 13), (256, 6)]
MAPS = {
    "alexnet": _ALEX,
    "alexnet_1col": _ALEX,
    "zfnet": [(96, 110), (96, 55), (256, 26), (256, 13), (384, 13), (384, 13), (256, 13)]
    + [(256, 6)],
    "overfeat_fast": [(96, 56), (96, 28), (256, 24), (256, 12), (512, 12), (1024, 12)]
    + [(1024, 12), (1024, 6)],
    "overfeat_accurate": [(96, 108), (96, 36), (256, 30), (256, 15), (512, 15), (512, 15)]
    + [(1024, 15), (1024, 15), (1024, 5)],
}

# An image that gives a 2x3 coarse score map, derived by hand:
# alexnet 256x288: conv1 63x71 -> 31x35 -> 15x17 -> pool5 7x8 -> fc6 6x6: 2x3
# zfnet 256x288: conv1 126x142 -> 63x71 -> conv2 30x34 -> 15x17 -> pool5 7x8 -> 2x3
# fast 263x295: ((H-11)/4+1)/8-6 = 2, 3 (README formula)
# accurate 281x317: PAPERS §3.3 scale 2: layer-5 20x23 -> 6x7 -> classifier 2x3
DENSE_2X3 = {
    "alexnet": (256, 288),
    "alexnet_1col": (256, 288),
    "zfnet": (256, 288),
    "overfeat_fast": (263, 295),
    "overfeat_accurate": (281, 317),
}
# AlexNet §5: bias 1 in conv2, conv4, conv5, fc6, fc7; every other bias is 0.
BIAS_ONE = {"features.4", "features.10", "features.12", "classifier.0", "classifier.3"}
NUM_CLASSES = 10


@dataclass
class Case:
    """One model (small head, eval mode) and one forward pass of it, shared by many tests."""

    name: str
    model: ConvNet
    images: torch.Tensor  # (1, 3, input_size, input_size)
    logits: torch.Tensor  # model(images)
    unpooled: torch.Tensor  # forward_features(images, pool=False)
    seen: list  # (C, H, W) after every conv and max-pool in features, in order


@pytest.fixture(scope="module", params=NAMES)
def case(request) -> Case:
    """Built once per name; pytest groups the tests by it so one model is alive at a time."""
    torch.manual_seed(0)
    model = create_model(request.param, num_classes=NUM_CLASSES).eval()
    images = torch.randn(1, 3, model.input_size, model.input_size)
    seen = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[1:])))
        for m in model.features
        if isinstance(m, nn.Conv2d | nn.MaxPool2d)
    ]
    with torch.no_grad():
        logits = model(images)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        unpooled = model.forward_features(images, pool=False)
    return Case(request.param, model, images, logits, unpooled, seen)


def create_model_meta(name: str, **kw) -> ConvNet:
    """Shapes only: no weight memory, no init time."""
    with torch.device("meta"):
        return create_model(name, **kw)


# --- registry ------------------------------------------------------------------------------


def test_registry_lists_the_five_models_and_the_ablations():
    assert NAMES == sorted(PARAMS)
    assert list_models() == sorted(NAMES + variant_names())


@pytest.mark.parametrize("name", NAMES)
def test_parameters_and_macs_match_papers(name):
    m = create_model_meta(name)
    assert sum(p.numel() for p in m.parameters()) == PARAMS[name]
    info = model_info(name)
    assert info == {
        "name": name,
        "paper": m.paper,
        "input_size": INPUT[name],
        "parameters": PARAMS[name],
        "macs": MACS[name],
    }
    assert m.input_size == INPUT[name]


def test_describe_models_and_hyphenated_names():
    assert [d["name"] for d in describe_models()] == list_models()
    assert type(create_model_meta("overfeat-fast")) is type(create_model_meta("overfeat_fast"))
    assert model_info("OverFeat-Accurate")["name"] == "overfeat_accurate"


def test_unknown_model_names_the_choices():
    with pytest.raises(UnknownModelError, match="unknown model 'nope'; choose one of") as e:
        create_model("nope")
    assert all(n in str(e.value) for n in NAMES)
    with pytest.raises(UnknownModelError):
        model_info("nope")
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("alexnet", num_classes=0)


@pytest.mark.parametrize("name", ["alexnet", "overfeat-fast", "ZFNet"])
def test_duplicate_registration_refused(name):
    with pytest.raises(ValueError, match="already registered"):
        register_model(name=name)(lambda num_classes=1000: None)
    assert list_models() == sorted(NAMES + variant_names())


# --- shapes ----------------------------------------------------------------------------------


def test_output_and_every_map_size(case):
    assert case.seen == [(c, s, s) for c, s in MAPS[case.name]]
    assert case.logits.shape == (1, NUM_CLASSES)
    assert case.model.num_classes == NUM_CLASSES


def test_contract_attributes(case):
    model = case.model
    assert isinstance(model.features, nn.Sequential)
    assert isinstance(model.classifier, nn.Sequential)
    assert model.final_pool is model.features[-1]
    assert isinstance(model.final_pool, nn.MaxPool2d)
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    drops = [m.p for m in model.classifier if isinstance(m, nn.Dropout)]
    assert drops == [0.5, 0.5]
    assert model.renormalize_radius == (0.1 if case.name == "zfnet" else None)


def test_pre_logits_and_unpooled_features(case):
    model = case.model
    with torch.no_grad():
        pooled = model.final_pool(case.unpooled)
        hidden = model.forward_head(pooled, pre_logits=True)
        logits = model.forward_head(pooled)
    s = model.feature_size
    assert case.unpooled.shape[-2:] == case.seen[-2][1:]  # the last conv's map
    assert pooled.shape[-2:] == (s, s)
    assert torch.equal(logits, case.logits)  # forward = head(final_pool(unpooled))
    assert hidden.shape == (1, model.num_features) == (1, 4096)
    last = model.classifier[-1]
    torch.testing.assert_close(logits, hidden @ last.weight.flatten(1).T + last.bias)


def test_wrong_input_size_is_refused(case):
    model = case.model
    s = model.feature_size + 2  # the pooled maps of a larger image
    maps = torch.zeros(1, case.unpooled.shape[1], s, s)
    with pytest.raises(ValueError, match="use forward_dense"):
        model.forward_head(maps)


# --- init ------------------------------------------------------------------------------------


def test_init_statistics(case):
    alex = case.name.startswith("alexnet")
    for name, m in case.model.named_modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        w = m.weight.detach().double()
        assert abs(w.mean().item()) < 1e-3, name
        assert w.std().item() == pytest.approx(0.01, rel=0.03), name
        want = 1.0 if alex and name in BIAS_ONE else 0.0
        assert torch.all(m.bias == want), name


# --- dense (convolutional) classifier --------------------------------------------------------


def test_dense_form_equals_fc_form(case):
    with torch.no_grad():
        dense = case.model.forward_dense(case.images)
    assert dense.shape == (1, NUM_CLASSES, 1, 1)
    tol = 1e-5 * case.logits.abs().max().item()
    torch.testing.assert_close(dense.flatten(1), case.logits, rtol=1e-4, atol=tol)


@pytest.mark.parametrize("name", NAMES)
def test_dense_form_slides_over_larger_images(name):
    m = create_model_meta(name, num_classes=7)
    images = torch.empty(1, 3, *DENSE_2X3[name], device="meta")
    assert m.forward_dense(images).shape == (1, 7, 2, 3)
    assert m.classifier_as_conv(copy=True)(m.forward_features(images)).shape == (1, 7, 2, 3)


def test_conv_form_shares_or_copies_the_fc_weights():
    torch.manual_seed(0)
    m = create_model("zfnet", num_classes=3).eval()
    shared = m.classifier_as_conv()
    assert shared[0].linear is m.classifier[0]
    images = torch.randn(1, 3, 224, 224)
    m.forward_dense(images).sum().backward()  # gradients reach the Linear parameters
    assert m.classifier[0].weight.grad.abs().sum() > 0
    copied = m.classifier_as_conv(copy=True)
    assert all(isinstance(c, nn.Conv2d) for c in copied if not isinstance(c, nn.ReLU | nn.Dropout))
    assert copied[0].weight.data_ptr() != m.classifier[0].weight.data_ptr()
    with torch.no_grad():
        pooled = m.forward_features(images)
        torch.testing.assert_close(copied(pooled), shared(pooled), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("size", "prepool", "pooled", "scores"),
    [  # PAPERS.md §3.3 table, accurate model
        ((245, 245), (17, 17), (5, 5), (1, 1)),
        ((281, 317), (20, 23), (6, 7), (2, 3)),
        ((317, 389), (23, 29), (7, 9), (3, 5)),
        ((389, 461), (29, 35), (9, 11), (5, 7)),
        ((425, 497), (32, 38), (10, 12), (6, 8)),
        ((461, 569), (35, 44), (11, 14), (7, 10)),
    ],
)
def test_overfeat_accurate_scales(size, prepool, pooled, scores):
    m = create_model_meta("overfeat_accurate", num_classes=7)
    images = torch.empty(1, 3, *size, device="meta")
    maps = m.forward_features(images, pool=False)
    assert maps.shape == (1, 1024, *prepool)
    for dx in range(3):  # offset pooling (Δx, Δy) ∈ {0,1,2}²: every shift gives the same grid
        for dy in range(3):
            shifted = m.final_pool(maps[:, :, dy:, dx:])
            assert shifted.shape[-2:] == pooled
            assert m.classifier(shifted).shape == (1, 7, *scores)
    assert m.forward_dense(images).shape == (1, 7, *scores)


@pytest.mark.parametrize("k", range(6))
def test_overfeat_fast_readme_formula(k):
    h = 231 + 32 * k  # README: windows start every 32 pixels
    w = h + 64
    side = lambda n: ((n - 11) // 4 + 1) // 8 - 6  # noqa: E731
    assert (side(h), side(w)) == (1 + k, 3 + k)
    m = create_model_meta("overfeat_fast", num_classes=7)
    images = torch.empty(1, 3, h, w, device="meta")
    assert m.forward_dense(images).shape == (1, 7, 1 + k, 3 + k)


# --- layers ----------------------------------------------------------------------------------


def _lrn_by_formula(a: np.ndarray, n=5, k=2.0, alpha=1e-4, beta=0.75) -> np.ndarray:
    """AlexNet §3.3 as written: b^i = a^i / (k + α Σ_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j²)^β."""
    b = np.empty_like(a)
    N = a.shape[1]
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        s = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        b[:, i] = a[:, i] / (k + alpha * s) ** beta
    return b


@pytest.mark.parametrize("conv", [False, True])
def test_lrn_is_the_paper_formula(conv):
    a = 40 * torch.randn(2, 9, 3, 4, dtype=torch.float64)  # large enough that α·Σa² matters
    want = _lrn_by_formula(a.numpy())
    assert np.abs(want - a.numpy() / 2**0.75).max() > 0.1  # the sum term is not negligible
    got = LocalResponseNorm(conv=conv)(a).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # PyTorch's own module divides α by n: the paper's α = 1e-4 is its 5e-4.
    torch_lrn = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a).numpy()
    np.testing.assert_allclose(torch_lrn, want, rtol=1e-12)
    # Two columns: each half is normalised on its own (N = 4 + 4 here, not 8).
    a8 = a[:, :8]
    got2 = LocalResponseNorm(columns=2, conv=conv)(a8).numpy()
    halves = [_lrn_by_formula(a8[:, :4].numpy()), _lrn_by_formula(a8[:, 4:].numpy())]
    np.testing.assert_allclose(got2, np.concatenate(halves, 1), rtol=1e-12)


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize(("size", "beta", "columns"), [(5, 0.75, 1), (5, 0.75, 2), (4, 0.6, 1)])
def test_lrn_gradient(size, beta, columns, conv):
    """The hand-written backward: finite differences, and autograd through PyTorch's LRN."""
    lrn = LocalResponseNorm(size, alpha=1e-2, beta=beta, k=2.0, columns=columns, conv=conv)
    a = (5 * torch.randn(2, 8, 3, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lrn, (a,))
    if columns == 1:
        grad = torch.randn_like(a)
        (ours,) = torch.autograd.grad(lrn(a), a, grad)
        ref = nn.functional.local_response_norm(a, size, 1e-2 * size, beta, 2.0)
        (theirs,) = torch.autograd.grad(ref, a, grad)
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("conv", [False, True])
def test_lrn_channels_last_and_autocast(conv):
    """Any memory format gives the same values; under bf16 autocast the sums stay float32
    (only the cast of the result back to bf16 rounds)."""
    lrn = LocalResponseNorm(columns=2, conv=conv)
    a = 30 * torch.randn(2, 16, 5, 6)
    want = lrn(a)
    got = lrn(a.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = lrn(a.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), lrn(a.bfloat16().float()), rtol=8e-3, atol=1e-2)


def test_lrn_conv_weights_cached_under_inference_mode_still_train():
    lrn = LocalResponseNorm(size=3, alpha=1e-2, columns=2, conv=True)  # a fresh cache key
    a = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    with torch.inference_mode():
        lrn(a)
    x = a.clone().requires_grad_()
    lrn(x).sum().backward()  # would raise if the cached weights were inference tensors
    assert torch.isfinite(x.grad).all()


def test_lrn_picks_conv_windows_off_cpu():
    assert not conv_windows(torch.device("cpu"))
    assert conv_windows(torch.device("cuda", 0))


@pytest.mark.parametrize("name", ["alexnet", "alexnet_1col", "zfnet"])
def test_models_use_paper_lrn_constants(name):
    lrns = [m for m in create_model_meta(name).features if isinstance(m, LocalResponseNorm)]
    assert [(m.size, m.alpha, m.beta, m.k) for m in lrns] == [(5, 1e-4, 0.75, 2.0)] * 2
    assert [m.columns for m in lrns] == [2 if name == "alexnet" else 1] * 2


def _column_leak(stack: nn.Module, in_channels: int, side: int) -> tuple[bool, bool]:
    """Perturb column 1 of the input; return (column 1 output changed, column 2 changed)."""
    x = torch.randn(1, in_channels, side, side)
    y = x.clone()
    y[:, : in_channels // 2] += torch.randn(1, in_channels // 2, side, side)
    with torch.no_grad():
        a, b = stack(x), stack(y)
    half = a.shape[1] // 2
    return not torch.equal(a[:, :half], b[:, :half]), not torch.equal(a[:, half:], b[:, half:])


def _random_features(name: str) -> nn.Sequential:
    """The conv stack with random weights (structure is what matters), without fc init cost."""
    torch.manual_seed(0)
    features = create_model_meta(name).features.to_empty(device="cpu")
    for m in features:
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.normal_(m.bias, 0, 0.01)
    return features


def test_alexnet_columns_are_block_diagonal():
    f = _random_features("alexnet")
    # ReLU1 -> LRN1 -> pool1 -> conv2 -> ReLU2 -> LRN2 -> pool2: nothing crosses the columns
    assert _column_leak(f[1:8], 96, 55) == (True, False)
    assert _column_leak(f[4], 96, 27) == (True, False)  # conv2
    assert _column_leak(f[10], 384, 13) == (True, False)  # conv4
    assert _column_leak(f[12], 384, 13) == (True, False)  # conv5
    assert _column_leak(f[8], 256, 13) == (True, True)  # conv3 sees both columns
    dense = _random_features("alexnet_1col")
    assert _column_leak(dense[4], 96, 27) == (True, True)
    assert _column_leak(dense[1:8], 96, 55) == (True, True)


def test_zfnet_renormalisation_clamps_only_filters_over_radius():
    torch.manual_seed(0)
    model = create_model("zfnet", num_classes=2)
    assert renormalize_filters(model, model.renormalize_radius) == 0  # N(0, 0.01): RMS ≈ 0.01
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        convs[0].weight[[3, 7, 50]] *= 25.0  # RMS ≈ 0.25
        convs[2].weight[10] *= 11.0  # RMS ≈ 0.11
        convs[2].weight[11] *= 9.0  # RMS ≈ 0.09: stays
    before = [c.weight.detach().clone() for c in convs]
    assert renormalize_filters(model, 0.1) == 4
    for conv, old in zip(convs, before, strict=True):
        rms = conv.weight.detach().double().pow(2).mean(dim=(1, 2, 3)).sqrt()
        over = old.double().pow(2).mean(dim=(1, 2, 3)).sqrt() > 0.1
        assert torch.equal(conv.weight[~over], old[~over])
        torch.testing.assert_close(rms[over], torch.full_like(rms[over], 0.1), rtol=1e-6, atol=0)
    assert renormalize_filters(model, 0.1) == 0


# --- head replacement and serialisation -----------------------------------------------------


def test_reset_classifier(case):
    model = case.model
    old, old_n = model.classifier[-1], model.num_classes
    pooled = model.final_pool(case.unpooled)
    try:
        model.reset_classifier(3)
        new = model.classifier[-1]
        assert type(new) is type(old) and new is not old
        assert model.num_classes == 3
        assert torch.all(new.bias == 0)
        assert new.weight.std().item() == pytest.approx(0.01, rel=0.1)
        with torch.no_grad():
            assert model.forward_head(pooled).shape == (1, 3)
            assert model.classifier_as_conv()(pooled).shape == (1, 3, 1, 1)
    finally:
        model.classifier[-1], model.num_classes = old, old_n


def test_safetensors_round_trip(case, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(case.model.state_dict(), str(path))
    # A fresh model without the init cost. Copy in (not assign=True): tensors mmapped from the
    # file are not 64-byte aligned, which changes CPU kernels' rounding (not bit-identical).
    fresh = create_model_meta(case.name, num_classes=NUM_CLASSES).to_empty(device="cpu")
    fresh.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(case.images), case.logits)


# --- ZFNet Table 3 ablations (variants.py) ---------------------------------------------------


def conv_params(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return cin // groups * cout * k * k + cout


def fc_params(cin: int, cout: int) -> int:
    return cin * cout + cout


def table3_params(name: str, classes: int = 1000) -> int:
    """Parameters from the layer shapes alone (PAPERS.md §1.1, §2.1; Table 3's changes)."""
    family, _, suffix = name.partition("_")
    remove = {
        "no34": {3, 4},
        "no7": {7},
        "no67": {6, 7},
        "no3467": {3, 4, 6, 7},
    }.get(suffix, set())
    maps = (512, 1024, 512) if suffix.startswith("b") else (384, 384, 256)
    units = {"fc2048": 2048, "fc8192": 8192, "b_fc8192": 8192}.get(suffix, 4096)
    g = 2 if family == "alexnet" else 1  # AlexNet's columns: conv2, conv4, conv5 grouped
    total = conv_params(3, 96, 11 if family == "alexnet" else 7) + conv_params(96, 256, 5, g)
    width = 256
    for layer, m in zip((3, 4, 5), maps, strict=True):
        if layer not in remove:
            total += conv_params(width, m, 3, 1 if layer == 3 else g)
            width = m
    inputs = width * 6 * 6  # pooled 6x6 maps of the last conv
    for layer in (6, 7):
        if layer not in remove:
            total += fc_params(inputs, units)
            inputs = units
    return total + fc_params(inputs, classes)


VARIANT_NAMES = variant_names()


def test_every_table3_row_is_registered_for_both_families():
    assert len(VARIANT_NAMES) == 2 * len(VARIANTS) == 16
    assert {"zfnet_no34", "zfnet_no67", "zfnet_no3467", "zfnet_fc2048", "zfnet_fc8192"} <= set(
        VARIANT_NAMES
    )
    assert {"zfnet_b", "alexnet_b", "alexnet_no34", "alexnet_no3467"} <= set(VARIANT_NAMES)
    assert type(create_model_meta("zfnet-no34")) is type(create_model_meta("zfnet"))


def test_wide_zfnet_b_has_the_published_parameter_count():
    assert model_info("zfnet_b")["parameters"] == 107_627_624  # PAPERS.md §2.1 (C3 assert)
    assert table3_params("zfnet_b") == 107_627_624  # the formula agrees with the paper
    assert table3_params("zfnet") == PARAMS["zfnet"] and table3_params("alexnet") == 60_965_224


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variant_parameters_and_output_shapes(name):
    m = create_model_meta(name)
    assert sum(p.numel() for p in m.parameters()) == table3_params(name)
    assert model_info(name)["parameters"] == table3_params(name)
    small = create_model_meta(name, num_classes=7)
    assert sum(p.numel() for p in small.parameters()) == table3_params(name, classes=7)
    images = torch.empty(2, 3, 224, 224, device="meta")
    maps = 512 if "_b" in name else 256
    assert small.forward_features(images).shape == (2, maps, 6, 6)
    assert small(images).shape == (2, 7)
    hidden = 0 if ("no67" in name or "no3467" in name) else 1
    width = {"fc2048": 2048}.get(name.split("_", 1)[1], 8192 if "8192" in name else 4096)
    assert small.num_features == (maps * 36 if not hidden else width)
    assert small.forward_head(small.forward_features(images), pre_logits=True).shape == (
        2,
        small.num_features,
    )
    assert small.forward_dense(torch.empty(1, 3, 256, 288, device="meta")).shape == (1, 7, 2, 3)


@pytest.mark.parametrize("name", ["zfnet_no3467", "alexnet_no3467", "zfnet_no7"])
def test_small_variants_run_and_keep_the_paper_layer_names(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    layers = model.named_layers()
    expected = {
        "zfnet_no3467": ["conv1", "conv2", "conv5", "fc8"],
        "alexnet_no3467": ["conv1", "conv2", "conv5", "fc8"],
        "zfnet_no7": ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc8"],
    }[name]
    assert list(layers) == expected
    # conv5 reads conv2's maps when 3, 4 are gone; fc8 reads fc6 when 7 is gone
    assert layers["conv5"].in_channels == (256 if "no34" in name else 384)
    assert layers["fc8"].in_features == (4096 if name == "zfnet_no7" else 256 * 36)
    if name.startswith("alexnet"):  # AlexNet §5 biases by layer name, not position
        assert torch.all(layers["conv5"].bias == 1) and torch.all(layers["conv2"].bias == 1)
        assert torch.all(layers["conv1"].bias == 0) and torch.all(layers["fc8"].bias == 0)
        assert layers["conv5"].groups == 2


def test_builder_options_match_the_registered_names_and_are_checked():
    a, b = create_model_meta("zfnet", maps=(512, 1024, 512)), create_model_meta("zfnet_b")
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]
    assert a.paper == b.paper and "512,1024,512" in b.paper
    # published nets keep their state-dict names (old checkpoints load)
    keys = set(create_model_meta("zfnet").state_dict())
    assert {"features.12.weight", "classifier.3.weight", "classifier.6.weight"} <= keys
    with pytest.raises(ConfigError, match="remove"):
        create_model_meta("zfnet", remove=(5,))
    with pytest.raises(ConfigError, match="maps"):
        create_model_meta("alexnet", maps=(1, 2))


def test_variant_names_resolve_to_the_family_recipe():
    from convplat.training.recipe import resolve_train_config

    config = resolve_train_config("zfnet-no34")
    assert config.model == "zfnet_no34" and config.recipe == "zfnet"
    assert resolve_train_config("alexnet_b").recipe == "alexnet"


def test_lrn_traces_whole_under_torch_compile(monkeypatch):
    """On an accelerator the eager LRN takes cached conv weights; under torch.compile it takes
    the shifted adds, which trace into one graph (no break) for the compiler to fuse."""
    import torch._dynamo

    from convplat.training.models import layers

    monkeypatch.setattr(layers, "conv_windows", lambda device: True)
    lrn = LocalResponseNorm(columns=2)
    x = torch.randn(2, 8, 5, 5)
    explained = torch._dynamo.explain(lrn)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch._dynamo.reset()


@pytest.mark.parametrize("lrn_conv", [False, True])
@pytest.mark.parametrize("name", ["alexnet", "zfnet", "overfeat_fast"])
def test_models_trace_whole_for_torch_compile(name, lrn_conv, monkeypatch):
    """`convplat train --compile`: a training forward under bf16 autocast traces into one graph,
    whether eager LRN would pick its CPU or its GPU window sums. (On an H200 with torch 2.11,
    graph breaks in LRN took compiled AlexNet from 1.55x to 0.79x its eager speed; those
    particular breaks do not happen with the pinned torch, so this guards against new ones.)"""
    import torch._dynamo

    from convplat.training.models import layers

    monkeypatch.setattr(layers, "conv_windows", lambda device: lrn_conv)
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).train()
    x = torch.randn(1, 3, model.input_size, model.input_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
