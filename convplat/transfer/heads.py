"""New softmax heads on frozen features (ZFNet §5.2: "train a new softmax classifier on top").

A head is multinomial logistic regression, ``softmax(W x + b)``, fitted on features that are
standardised with the training split's mean and standard deviation, with an L2 penalty
``weight_decay / 2 * ||W||^2`` on the weights (not the bias). L-BFGS solves the convex problem
in full batch (default); SGD with momentum is the alternative. The weight decay is chosen from
a small grid on a held-out part of the train split, then the head is refitted on the whole
split. The returned ``nn.Linear`` has the standardisation folded in, so it takes raw features.

Features come as ``(V, N, D)``: V views of N images (V = 2 with the flip augmentation). Every
view is a training sample; predictions average the views' softmax outputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convplat.transfer.protocol import holdout_split, mean_class_accuracy

EPS = 1e-6
# Below this many multiply-adds per pass, one thread is faster: on a busy 2-core machine,
# intra-op threads on tiny matrices cost 10-100x (measured: 18 s vs 0.2 s for an SGD head).
SMALL_WORK = 20_000_000


@contextlib.contextmanager
def threads_for(work: int) -> Iterator[None]:
    """Run small problems single-threaded; leave torch's thread count alone for large ones."""
    previous = torch.get_num_threads()
    if work >= SMALL_WORK or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class HeadFit:
    """A fitted head: ``linear`` on raw features, the chosen weight decay and the grid scores
    (``{weight_decay: (held-out mean per-class accuracy, held-out NLL)}``)."""

    linear: nn.Linear
    weight_decay: float
    scores: dict[float, tuple[float, float]] = field(default_factory=dict)


def as_views(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(N, D)`` or ``(V, N, D)`` -> float32 tensor ``(V, N, D)``."""
    x = torch.as_tensor(features, dtype=torch.float32)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise ValueError(f"expected features (N, D) or (V, N, D), got {tuple(x.shape)}")
    return x


def standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation over every row of ``(..., D)`` features.

    Dimensions that never vary (dead ReLUs) get std 1, so they stay 0 and cost nothing.
    """
    flat = x.reshape(-1, x.shape[-1]).double()
    mean = flat.mean(0)
    std = flat.std(0, unbiased=False)
    std = torch.where(std > EPS, std, torch.ones_like(std))
    return mean.float(), std.float()


def fold(linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """The same head on raw features: ``W (x - m) / s + b = (W / s) x + (b - (W / s) m)``.

    The result lives on the CPU, whatever device the head was fitted on.
    """
    weight = linear.weight.detach().cpu().double() / std.cpu().double()
    bias = linear.bias.detach().cpu().double() - weight @ mean.cpu().double()
    out = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        out.weight.copy_(weight.float())
        out.bias.copy_(bias.float())
    return out.requires_grad_(False)


def _objective(x, y, weight, bias, weight_decay):
    return F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()


def train_softmax(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    *,
    optimizer: str = "lbfgs",
    iters: int = 200,
    init: nn.Linear | None = None,
    lr: float = 0.1,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Linear:
    """Fit ``softmax(W x + b)`` to ``x (n, D)``, ``y (n,)`` by minimising the mean cross-entropy
    plus ``weight_decay / 2 * ||W||^2``.

    Args:
        optimizer: ``lbfgs`` (full batch, strong-Wolfe line search, ``iters`` iterations at
            most; deterministic) or ``sgd`` (``iters`` epochs of momentum-0.9 SGD with a
            cosine learning-rate decay from ``lr``, seeded batch order).
        init: warm start (e.g. the solution at a neighbouring weight decay); zeros otherwise.
    """
    x = x.float()
    y = y.long()
    dim = x.shape[1]
    weight, bias = _start(num_classes, dim, init, x.device)
    if optimizer == "lbfgs":
        return _lbfgs_head(
            weight, bias, lambda: _objective(x, y, weight, bias, weight_decay), iters
        )
    if optimizer == "sgd":
        generator = torch.Generator().manual_seed(seed)
        order = (torch.randperm(len(y), generator=generator).to(x.device) for _ in range(iters))
        batches = (
            (x[perm[i : i + batch_size]], y[perm[i : i + batch_size]])
            for perm in order
            for i in range(0, len(y), batch_size)
        )
        head = nn.Linear(dim, num_classes, device=x.device)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        sgd_train(
            head,
            batches,
            steps=iters * math.ceil(len(y) / batch_size),
            lr=lr,
            weight_decay=weight_decay,
        )
        return head.requires_grad_(False)
    raise ValueError(f"expected optimizer lbfgs or sgd, got {optimizer!r}")


def _start(
    num_classes: int, dim: int, init: nn.Linear | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trainable (weight, bias): zeros, or a copy of ``init`` (a warm start)."""
    zeros = {"device": device, "dtype": torch.float32}
    weight = (
        torch.zeros(num_classes, dim, **zeros) if init is None else init.weight.detach().clone()
    )
    bias = torch.zeros(num_classes, **zeros) if init is None else init.bias.detach().clone()
    return weight.requires_grad_(True), bias.requires_grad_(True)


def _lbfgs_head(weight: torch.Tensor, bias: torch.Tensor, objective, iters: int) -> nn.Linear:
    """Minimise the convex ``objective()`` over (weight, bias) with full-batch L-BFGS
    (strong-Wolfe line search, at most ``iters`` iterations; deterministic)."""
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=iters,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    num_classes, dim = weight.shape
    head = nn.Linear(dim, num_classes, device=weight.device)
    with torch.no_grad():
        head.weight.copy_(weight.detach())
        head.bias.copy_(bias.detach())
    return head.requires_grad_(False)


def sgd_train(
    head: nn.Linear,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    steps: int,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> nn.Linear:
    """Momentum SGD on ``head`` over ``steps`` batches of ``(inputs, labels)``, cosine-decayed lr.

    ``features`` maps a batch's inputs to head inputs first (e.g. a frozen backbone run every
    epoch - the slow way benchmarks/transfer.py compares against); default: inputs are features.
    The loss is the same objective as L-BFGS's (mean cross-entropy + L2 on the weights).
    """
    head.requires_grad_(True)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum)
    for step, (inputs, labels) in enumerate(batches):
        if step >= steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        if features is not None:
            with torch.no_grad():
                inputs = features(inputs)
        opt.zero_grad(set_to_none=True)
        loss = _objective(inputs, labels, head.weight, head.bias, weight_decay)
        loss.backward()
        opt.step()
    return head.requires_grad_(False)


@torch.no_grad()
def predict_proba(linear: nn.Linear, features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Softmax outputs ``(N, C)`` averaged over the views of ``(V, N, D)`` (or ``(N, D)``)."""
    views = as_views(features).to(linear.weight.device)
    return torch.softmax(views @ linear.weight.T + linear.bias, dim=-1).mean(0).cpu()


def _flat(views: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every view of every image as a training row."""
    v = views.shape[0]
    return views.reshape(-1, views.shape[-1]), y.repeat(v)


def fit_head(
    features: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    *,
    weight_decays: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
    holdout: float = 0.2,
    optimizer: str = "lbfgs",
    iters: int = 200,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> HeadFit:
    """Fit a softmax head with the weight decay chosen on a held-out part of the train images.

    Args:
        features: the train split's features, ``(N, D)`` or ``(V, N, D)``.
        labels: their classes ``(N,)``.
        weight_decays: the grid; one value (or ``holdout == 0``, or no class with 2 train
            images) skips the selection.
        holdout: fraction of each class's train images held out to score the grid (the
            held-out mean per-class accuracy; ties go to the lower held-out cross-entropy).
        seed: for the held-out draw and SGD's batch order.
        device: where to fit (a GPU helps on Caltech-256 sizes); the result is on the CPU.

    Returns:
        The head refitted on every train image at the chosen weight decay, as raw-feature
        ``nn.Linear`` (standardisation folded in).
    """
    views = as_views(features).to(device)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if views.shape[1] != len(y):
        raise ValueError(f"expected {views.shape[1]} labels, got {len(y)}")
    y = y.to(device)
    with threads_for(views.shape[0] * views.shape[1] * views.shape[2] * num_classes):
        return _fit_head(views, y, num_classes, weight_decays, holdout, optimizer, iters, seed)


def _fit_head(views, y, num_classes, weight_decays, holdout, optimizer, iters, seed) -> HeadFit:
    grid = sorted({float(w) for w in weight_decays}, reverse=True)  # strong to weak: warm starts
    opts = {"optimizer": optimizer, "iters": iters, "seed": seed}
    scores: dict[float, tuple[float, float]] = {}
    chosen = grid[0]
    fit_idx, held_idx = holdout_split(y.cpu().numpy(), holdout, np.random.default_rng([seed, 7]))
    fit_idx, held_idx = (torch.from_numpy(i).to(views.device) for i in (fit_idx, held_idx))
    if len(grid) > 1 and len(held_idx) > 0:
        fit_views, held_views = views[:, fit_idx], views[:, held_idx]
        mean, std = standardizer(fit_views)
        x_fit, y_fit = _flat((fit_views - mean) / std, y[fit_idx])
        held_std = (held_views - mean) / std
        y_held = y[held_idx]
        previous = None
        heads = {}
        for wd in grid:
            head = train_softmax(x_fit, y_fit, num_classes, wd, init=previous, **opts)
            previous = heads[wd] = head
            proba = predict_proba(head, held_std)
            y_cpu = y_held.cpu()
            accuracy, _ = mean_class_accuracy(proba.argmax(1).numpy(), y_cpu.numpy(), num_classes)
            nll = float(F.nll_loss(proba.clamp_min(1e-12).log(), y_cpu))
            scores[wd] = (accuracy, nll)
        chosen = max(grid, key=lambda wd: (scores[wd][0], -scores[wd][1]))
        init = heads[chosen]  # a warm start for the refit on every train image
    else:
        init = None
    mean, std = standardizer(views)
    x_all, y_all = _flat((views - mean) / std, y)
    head = train_softmax(x_all, y_all, num_classes, chosen, init=init, **opts)
    return HeadFit(fold(head, mean, std), chosen, scores)


# --- multi-label heads (PASCAL VOC, ZFNet Table 6) ------------------------------------------------


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "sigmoid"):
    """Mean over images of a multi-label loss; ``targets (N, C)`` hold VOC's 1 / 0 / -1.

    ``sigmoid``: binary cross-entropy per class, summed over classes; 0 ("difficult only")
    entries are left out, as VOC's scoring leaves them out. ``softmax``: cross-entropy of one
    softmax against the image's present classes, equally weighted (images with none are left
    out) - a 20-way softmax as in ZFNet §5.3.
    """
    targets = targets.to(logits.device)
    positive = (targets == 1).to(logits.dtype)
    n = max(1, logits.shape[0])
    if kind == "sigmoid":
        known = (targets != 0).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, positive, weight=known, reduction="sum")
        return bce / n
    if kind == "softmax":
        counts = positive.sum(1)
        rows = counts > 0
        if not rows.any():
            return logits.sum() * 0.0
        q = positive[rows] / counts[rows, None]
        return -(q * torch.log_softmax(logits[rows], dim=1)).sum(1).mean()
    raise ValueError(f"expected loss sigmoid or softmax, got {kind!r}")


@torch.no_grad()
def predict_scores(
    linear: nn.Linear, features: np.ndarray | torch.Tensor, kind: str = "sigmoid"
) -> torch.Tensor:
    """Per-class scores ``(N, C)`` (sigmoid or softmax outputs) averaged over the views."""
    views = as_views(features).to(linear.weight.device)
    logits = views @ linear.weight.T + linear.bias
    scores = torch.sigmoid(logits) if kind == "sigmoid" else torch.softmax(logits, dim=-1)
    return scores.mean(0).cpu()


def train_multilabel(
    x: torch.Tensor,
    targets: torch.Tensor,
    weight_decay: float,
    *,
    kind: str = "sigmoid",
    iters: int = 200,
    init: nn.Linear | None = None,
) -> nn.Linear:
    """Fit ``W x + b`` to ``x (n, D)`` and ``targets (n, C)`` by minimising
    ``multilabel_loss + weight_decay / 2 * ||W||^2`` with full-batch L-BFGS (convex)."""
    x = x.float()
    weight, bias = _start(targets.shape[1], x.shape[1], init, x.device)

    def objective() -> torch.Tensor:
        loss = multilabel_loss(x @ weight.T + bias, targets, kind)
        return loss + 0.5 * weight_decay * weight.pow(2).sum()

    return _lbfgs_head(weight, bias, objective, iters)


def fit_multilabel_head(
    features: np.ndarray | torch.Tensor,
    targets: np.ndarray,
    *,
    kind: str = "sigmoid",
    weight_decays: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
    holdout: float = 0.2,
    iters: int = 200,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> HeadFit:
    """A multi-label head with the weight decay chosen on a held-out part of the train images.

    Args:
        features: ``(N, D)`` or ``(V, N, D)`` train features; ``targets (N, C)`` in 1 / 0 / -1.
        holdout: fraction of the train images (drawn at random: a multi-label set cannot be
            stratified by class) held out to score the grid by mean average precision over
            the classes with a held-out positive; ties go to the lower held-out loss.

    Returns:
        The head refitted on every train image, on raw features (standardisation folded in);
        ``scores`` maps each weight decay to (held-out mAP, held-out loss).
    """
    from convplat.transfer.protocol import class_average_precisions

    views = as_views(features).to(device)
    t = torch.as_tensor(np.asarray(targets), dtype=torch.int8)
    if t.ndim != 2 or t.shape[0] != views.shape[1]:
        raise ValueError(f"expected targets ({views.shape[1]}, C), got {tuple(t.shape)}")
    t = t.to(device)
    n, v = views.shape[1], views.shape[0]
    grid = sorted({float(w) for w in weight_decays}, reverse=True)
    scores: dict[float, tuple[float, float]] = {}
    chosen, init = grid[0], None
    held_n = 0 if holdout <= 0 else min(n - 1, max(1, round(holdout * n)))
    with threads_for(v * n * views.shape[2] * t.shape[1]):
        if len(grid) > 1 and held_n > 0:
            order = np.random.default_rng([seed, 7]).permutation(n)
            held = torch.from_numpy(np.sort(order[:held_n])).to(device)
            fit = torch.from_numpy(np.sort(order[held_n:])).to(device)
            mean, std = standardizer(views[:, fit])
            x_fit = ((views[:, fit] - mean) / std).reshape(-1, views.shape[2])
            t_fit = t[fit].repeat(v, 1)
            held_std = (views[:, held] - mean) / std
            heads = {}
            for wd in grid:
                init = heads[wd] = train_multilabel(
                    x_fit, t_fit, wd, kind=kind, iters=iters, init=init
                )
                logits = (held_std @ init.weight.T + init.bias).mean(0)
                loss = float(multilabel_loss(logits, t[held], kind))
                proba = predict_scores(init, held_std, kind).numpy()
                ap = class_average_precisions(proba, t[held].cpu().numpy())
                mean_ap = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
                scores[wd] = (mean_ap, loss)
            chosen = max(
                grid,
                key=lambda wd: (np.nan_to_num(scores[wd][0], nan=-1.0), -scores[wd][1]),
            )
            init = heads[chosen]
        mean, std = standardizer(views)
        x_all = ((views - mean) / std).reshape(-1, views.shape[2])
        head = train_multilabel(x_all, t.repeat(v, 1), chosen, kind=kind, iters=iters, init=init)
    return HeadFit(fold(head, mean, std), chosen, scores)
