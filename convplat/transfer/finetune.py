"""Modes ``scratch`` and ``full``: the whole network trained end to end on a split's train images.

``scratch`` is ZFNet §5.2's non-pretrained baseline ("reset layers 1-7 to random and train
everything on the target set"); ``full`` starts from the ImageNet weights with a new output
layer and fine-tunes every layer. Both use the training preprocessing (mean-image subtraction
over each crop's window, the checkpoint's input scale) with random ``input_size`` crops and
flips, dropout on, and Adam; the budget is small by default (``--epochs 3``), so ``scratch`` is a
cheap baseline rather than the paper's converged one - raise ``--epochs`` for a stronger one.

Images stay in memory as the S x S JPEGs the shards would hold and are decoded per batch
(~0.3 ms each, against ~50 ms of forward and backward on a CPU core), so a whole Caltech split
never sits in memory as uint8.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convplat.training.augment import BatchTransform, center_window, random_windows
from convplat.training.models import ConvNet, reinitialize
from convplat.training.models.pretrained import build_network
from convplat.transfer.checkpoint import Checkpoint
from convplat.transfer.extract import decode_pixels


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` under a fixed torch seed, leaving the global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def scratch_model(checkpoint: Checkpoint, num_classes: int, seed: int) -> ConvNet:
    """The checkpoint's architecture, freshly initialised the way its ImageNet run was.

    The same initialisation scheme as the pretrained run (the paper's, or the demo preset's
    He init), so the comparison isolates what ImageNet pretraining adds.
    """
    return seeded(
        seed,
        lambda: reinitialize(build_network(checkpoint.model, num_classes), checkpoint.init),
    )


def pretrained_model(checkpoint: Checkpoint, num_classes: int, seed: int) -> ConvNet:
    """The ImageNet weights with a new N(0, 0.01) output layer of ``num_classes``."""
    model = checkpoint.build()

    def reset() -> ConvNet:
        model.reset_classifier(num_classes)
        return model

    return seeded(seed, reset)


def train_network(
    model: nn.Module,
    jpegs: Sequence[bytes],
    labels: np.ndarray,
    transform: BatchTransform,
    *,
    crop: int,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_step: Callable[[int], None] | None = None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Train every trainable parameter of ``model`` with Adam on random crops and flips.

    Args:
        jpegs: the train images (S x S JPEG bytes) and ``labels`` their classes ``(N,)`` - or
            any per-image targets ``(N, ...)`` that ``loss`` understands (VOC: ``(N, 20)``).
        transform: uint8 crops + windows -> model input (lighting off).
        crop: the model's ``input_size``.
        on_step: called with the batch size after each step (progress).
        loss: ``(logits, targets) -> scalar``; default: cross-entropy on class labels.
    """
    device = torch.device(device)
    model.to(device).train()
    transform = transform.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng([seed, 11])
    labels = np.asarray(labels)
    if loss is None:
        labels, loss = labels.astype(np.int64), F.cross_entropy
    n = len(jpegs)
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            pixels = decode_pixels([jpegs[i] for i in idx])  # (B, S, S, 3)
            size = pixels.shape[1]
            windows = random_windows(len(idx), size, size, crop, rng)  # (B, 3) top, left, flip
            crops = np.stack(
                [pixels[b, t : t + crop, x : x + crop] for b, (t, x, _) in enumerate(windows)]
            )
            inputs = transform(
                torch.from_numpy(crops).to(device),
                torch.from_numpy(windows).to(device),
                lighting=False,
            )
            target = torch.from_numpy(labels[idx]).to(device)
            value = loss(model(inputs), target)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            if on_step is not None:
                on_step(len(idx))
    return model.eval()


@torch.no_grad()
def predict_network(
    model: nn.Module,
    jpegs: Sequence[bytes],
    transform: BatchTransform,
    *,
    crop: int,
    flip: bool = False,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    activation: str = "softmax",
) -> torch.Tensor:
    """Softmax (or, with ``activation="sigmoid"``, per-class sigmoid) outputs ``(N, C)`` on
    the centre crop (averaged with its mirror when ``flip``)."""
    device = torch.device(device)
    model.to(device).eval()
    transform = transform.to(device)
    out = []
    for start in range(0, len(jpegs), batch_size):
        pixels = decode_pixels(jpegs[start : start + batch_size])
        size = pixels.shape[1]
        top, left, _ = center_window(size, size, crop)
        crops = torch.from_numpy(pixels[:, top : top + crop, left : left + crop]).to(device)
        views = (0, 1) if flip else (0,)
        proba = 0
        for v in views:
            windows = torch.tensor([[top, left, v]] * len(pixels), dtype=torch.int64)
            logits = model(transform(crops, windows.to(device), lighting=False))
            logits = logits.float()
            scores = torch.sigmoid(logits) if activation == "sigmoid" else logits.softmax(1)
            proba = proba + scores.cpu()
        out.append(proba / len(views))
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)
