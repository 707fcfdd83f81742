"""Top-k metrics and the evaluation loop against direct computations; recipes as data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convplat.config import TrainConfig
from convplat.errors import ConfigError, UnknownModelError
from convplat.training.loop import evaluate_batches, topk_correct, train_one_epoch
from convplat.training.recipe import resolve_train_config


def test_topk_correct_matches_a_direct_count():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=generator)
    labels = torch.randint(0, 7, (50,), generator=generator)
    ranks = (logits > logits.gather(1, labels[:, None])).sum(dim=1)  # how many score higher
    assert topk_correct(logits, labels, (1, 3, 5)) == [
        int((ranks < 1).sum()),
        int((ranks < 3).sum()),
        int((ranks < 5).sum()),
    ]
    assert topk_correct(logits[:, :3], labels.clamp(max=2), (1, 5))[1] == 50  # k > classes


class Lookup(nn.Module):
    """A 'model' whose logits are stored per input id, so the expected errors are known."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids.long().flatten()]


def batches_of(ids: torch.Tensor, labels: torch.Tensor, size: int):
    for start in range(0, len(ids), size):
        chunk = slice(start, start + size)
        yield ids[chunk], labels[chunk], torch.zeros(len(ids[chunk]), 3, dtype=torch.int64)


def test_evaluate_batches_is_exact_with_an_uneven_last_batch():
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(23, 10, generator=generator)
    labels = torch.randint(0, 10, (23,), generator=generator)
    ids = torch.arange(23)
    result = evaluate_batches(
        Lookup(table), batches_of(ids, labels, 5), lambda x, w: x, torch.device("cpu")
    )
    top1, top5 = topk_correct(table, labels)
    assert result["count"] == 23
    assert result["top1_err"] == pytest.approx(1 - top1 / 23)
    assert result["top5_err"] == pytest.approx(1 - top5 / 23)
    expected_loss = nn.functional.cross_entropy(table, labels).item()
    assert result["val_loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_ten_crop_evaluation_averages_softmax_per_image():
    table = torch.tensor([[4.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # 2 images x 2 crops
    ids = torch.arange(4)
    labels = torch.tensor([1, 1])
    batches = [(ids, labels, torch.zeros(2, 3, dtype=torch.int64))]
    result = evaluate_batches(
        Lookup(table), batches, lambda x, w: x, torch.device("cpu"), crops_per_image=2
    )
    # image 0: mean softmax favours class 0 (wrong); image 1: class 1 (right)
    assert result["top1_err"] == pytest.approx(0.5)


def test_train_one_epoch_reports_loss_images_and_wait():
    table = torch.zeros(8, 3)
    model = Lookup(table)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    def epoch() -> dict:
        batches = batches_of(torch.arange(8), labels, 4)
        identity = lambda x, w, generator=None: x  # noqa: E731
        return train_one_epoch(model, batches, identity, optimizer, torch.device("cpu"))

    first = epoch()
    assert first["images"] == 8 and 0 <= first["data_wait"] <= 1
    assert first["train_loss"] == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-5)
    second = epoch()
    assert second["train_loss"] < first["train_loss"]


def test_recipes_layer_defaults_recipe_file_and_flags(tmp_path):
    assert resolve_train_config("zfnet").epochs == 70
    overfeat = resolve_train_config("overfeat-fast")
    assert (overfeat.lr, overfeat.momentum, overfeat.milestones) == (
        0.05,
        0.6,
        (30, 50, 60, 70, 80),
    )
    custom = tmp_path / "mine.toml"
    custom.write_text("epochs = 7\nlr = 0.02\n")
    config = resolve_train_config("alexnet", str(custom), {"lr": 0.03})
    assert (config.epochs, config.lr, config.momentum) == (7, 0.03, 0.9)
    assert resolve_train_config("alexnet", "demo").init == "kaiming"
    bad = tmp_path / "bad.toml"
    bad.write_text("learning_rate = 1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_train_config("alexnet", str(bad))
    with pytest.raises(UnknownModelError, match="choose one of"):
        resolve_train_config("vgg16")
    with pytest.raises(ConfigError, match="multiple of the 3 workers"):
        TrainConfig(batch_size=128, workers=3)


def test_label_smoothing_reaches_the_loss_and_is_validated(tmp_path):
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, 1])
    log_p = logits.log_softmax(dim=1)
    smoothing = 0.3

    def first_loss(**kw) -> float:
        batches = batches_of(torch.arange(2), labels, 2)
        identity = lambda x, w, generator=None: x  # noqa: E731
        model = Lookup(logits)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the loss of these logits
        return train_one_epoch(model, batches, identity, optimizer, torch.device("cpu"), **kw)[
            "train_loss"
        ]

    # (1 - e) on the label plus e spread over all 3 classes, written out by hand
    target = torch.full((2, 3), smoothing / 3)
    target[torch.arange(2), labels] += 1 - smoothing
    expected = float(-(target * log_p).sum(dim=1).mean())
    assert first_loss(label_smoothing=smoothing) == pytest.approx(expected, rel=1e-5)
    plain = float(-log_p[torch.arange(2), labels].mean())
    assert first_loss() == pytest.approx(plain, rel=1e-5) and plain != pytest.approx(expected)
    assert TrainConfig().label_smoothing == 0.0  # the papers' recipes: plain cross-entropy
    assert resolve_train_config("alexnet").label_smoothing == 0.0
    assert resolve_train_config("alexnet", "demo").label_smoothing == 0.1  # the demo preset
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="label_smoothing: expected 0 <= value < 1"):
            TrainConfig(label_smoothing=bad)
    recipe = tmp_path / "smooth.toml"
    recipe.write_text("label_smoothing = 0.2\n")
    assert resolve_train_config("alexnet", str(recipe)).label_smoothing == 0.2
