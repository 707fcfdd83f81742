"""One training epoch and exact evaluation; no Ray here, so both run in tests and notebooks.

Evaluation counts every validation sample exactly once across ranks (no DistributedSampler
padding) and all-reduces the sums, so top-1/top-5 are exact (FIELD-NOTES: distributed eval).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from convplat.training.raytrain import check_finite


def topk_correct(
    logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> list[int]:
    """Number of samples whose label is among the top-k scores, for each k."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices  # (B, k_max)
    hits = top.eq(labels[:, None])
    return [int(hits[:, : min(k, k_max)].any(dim=1).sum()) for k in ks]


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on the device when enabled (AMP), else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    transform: Callable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    amp: bool = False,
    after_step: Callable[[], None] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    generator: torch.Generator | None = None,
    before_step: Callable[[], None] | None = None,
    label_smoothing: float = 0.0,
) -> dict:
    """Run one pass over ``batches`` of (uint8 images, labels, windows).

    ``label_smoothing`` > 0 trains towards (1 - e) on the label and e / classes elsewhere
    (``F.cross_entropy``'s option), so the network does not saturate at p ~ 1 on easy data.

    ``on_step(step, loss)`` gets the detached loss tensor: reading it (``float``) waits for the
    device, so a caller that reports progress reads it only when it shows it, and the GPU
    keeps a step queued behind the one it runs.

    Returns the mean training loss, images, seconds, images/s and the fraction of time spent
    waiting for data (the loader keeps up when it is near 0).
    """
    model.train()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    images = 0
    wait = 0.0
    started = tick = time.perf_counter()
    for step, (crops, labels, windows) in enumerate(batches):
        wait += time.perf_counter() - tick
        crops = crops.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        windows = windows.to(device, non_blocking=True)
        inputs = transform(crops, windows, generator=generator)
        with autocast(device, amp):
            logits = model(inputs)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:  # e.g. column parallelism's gradient average over pairs
            before_step()
        optimizer.step()
        if after_step is not None:
            after_step()
        loss = loss.detach()
        loss_sum += loss * labels.shape[0]
        images += labels.shape[0]
        if on_step is not None:
            on_step(step, loss)
        tick = time.perf_counter()
    seconds = time.perf_counter() - started
    mean_loss = float(loss_sum) / max(images, 1)
    check_finite(mean_loss)  # the one divergence check of every trainer
    return {
        "train_loss": mean_loss,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / max(seconds, 1e-9),
        "data_wait": wait / max(seconds, 1e-9),
    }


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable,
    transform: Callable,
    device: torch.device,
    *,
    crops_per_image: int = 1,
    amp: bool = False,
    distributed: bool = False,
    group=None,
    num_classes: int = 0,
) -> dict:
    """Loss and top-1/top-5 error over ``batches``, exact across ranks when ``distributed``
    (summed over ``group``, default all ranks).

    With ``crops_per_image`` > 1 (ten-crop), ``transform`` returns that many crops per image,
    image-major, and the softmax outputs are averaged per image (AlexNet §4.1). With
    ``num_classes``, the result also holds ``confusion``: (true, predicted) counts as lists.
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    for images, labels, windows in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        windows = windows.to(device, non_blocking=True)
        inputs = transform(images, windows)
        with autocast(device, amp):
            logits = model(inputs).float()
        probs = logits.softmax(dim=1)
        if crops_per_image > 1:
            probs = probs.view(labels.shape[0], crops_per_image, -1).mean(dim=1)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")
        top1, top5 = topk_correct(probs, labels)
        if num_classes:
            confusion.index_put_(
                (labels, probs.argmax(1)), torch.ones_like(labels), accumulate=True
            )
        sums += torch.tensor(
            [float(loss), top1, top5, labels.shape[0]], dtype=torch.float64, device=device
        )
    if distributed and dist.is_available() and dist.is_initialized():
        dist.all_reduce(sums, group=group)
        if num_classes:
            dist.all_reduce(confusion, group=group)
    loss, top1, top5, count = (float(v) for v in sums)
    extra = {"confusion": confusion.cpu().tolist()} if num_classes else {}
    if count == 0:
        return {"val_loss": None, "top1_err": None, "top5_err": None, "count": 0, **extra}
    return {
        "val_loss": loss / count,
        "top1_err": 1 - top1 / count,
        "top5_err": 1 - top5 / count,
        "count": int(count),
        **extra,
    }
