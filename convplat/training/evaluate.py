"""`convplat evaluate RUN`: top-1/top-5 error of a trained run, centre or ten-crop.

Runs in the calling process (one device); every validation sample is counted exactly once.
"""

from __future__ import annotations

import torch

from convplat.errors import ConfigError
from convplat.storage import resolve
from convplat.training.checkpoints import load_run_model, write_json

MODES = ("center", "ten-crop")


def evaluate(
    run: str,
    mode: str = "center",
    data: str | None = None,
    split: str = "val",
    batch_size: int = 64,
    weights: str = "final",
    num_workers: int = 0,
    device: str | None = None,
) -> dict:
    """Top-1/top-5 error of ``run`` on ``split`` of its shards (or ``data``).

    ``center``: the central crop of the model's input size; ``ten-crop``: four corners and
    the centre plus their mirror images, softmax outputs averaged (AlexNet §4.1).
    Writes ``eval-<mode>-<split>.json`` into the run directory and returns the metrics.
    """
    from convplat.training.augment import BatchTransform, TenCrop
    from convplat.training.data import eval_loader, load_stats
    from convplat.training.loop import evaluate_batches

    if mode not in MODES:
        raise ConfigError(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
    model, config = load_run_model(run, weights)
    shards = data or config["data"]
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target)
    stats = load_stats(shards)
    crop = model.input_size
    transform = BatchTransform.from_stats(
        stats, lighting_std=0.0, input_scale=config["input_scale"]
    )
    crops = 1
    if mode == "ten-crop":
        transform, crops = TenCrop(transform, crop), 10
    batches = eval_loader(
        shards,
        split,
        batch_size=batch_size,
        rank=0,
        world_size=1,
        num_workers=num_workers,
        crop_size=crop,
        mode=mode,
    )
    metrics = evaluate_batches(model, batches, transform.to(target), target, crops_per_image=crops)
    result = {
        "run": run,
        "mode": mode,
        "split": split,
        "data": shards,
        "weights": weights,
        **metrics,
    }
    write_json(resolve(run), f"eval-{mode}-{split}.json", result)
    return result
