"""`transfer(config) -> results`: ZFNet §5.2 on a Caltech (or any folder) dataset, end to end
(PASCAL VOC 2012, with its fixed split and AP metric, is handed to ``voc.transfer_voc``).

Reads the dataset, loads the ImageNet checkpoint, extracts (or reuses) frozen features, then for
every train size and split trains a new softmax head (mode ``head``) or the whole network
(``scratch``, ``full``) and scores the mean per-class accuracy. Writes
``<out>/transfer-<dataset>-<stamp>/``: ``config.json``, ``results.json``, ``head.safetensors``
and ``confusion-<cut>-<k>.png`` (see docs/transfer.md).
"""

from __future__ import annotations

import io
import json
import math
import os
import time

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from convplat.config import TransferConfig
from convplat.errors import DatasetError
from convplat.pipeline.readers import read_dataset
from convplat.progress import progress_bar
from convplat.training.checkpoints import write_json
from convplat.transfer import finetune
from convplat.transfer.checkpoint import Checkpoint, load_checkpoint
from convplat.transfer.extract import default_device, make_transform
from convplat.transfer.gather import DatasetFeatures
from convplat.transfer.heads import fit_head, predict_proba
from convplat.transfer.protocol import (
    Split,
    confusion_matrix,
    make_splits,
    mean_class_accuracy,
    mean_std,
    row_label,
)
from convplat.transfer.runs import (
    gather_features,
    load_mean,
    result_header,
    run_location,
    run_record,
    torch_seeded,
)

_EXPECTED = {
    "caltech101": "101_ObjectCategories/<class>/image_NNNN.jpg",
    "caltech256": "256_ObjectCategories/NNN.name/NNN_MMMM.jpg",
    "folder": "<class>/*.jpg",
}


def transfer(config: TransferConfig) -> dict:
    """Run the transfer protocol of ``config``; returns the results dict (also results.json).

    Raises:
        ConfigError: an unknown dataset name or bad option.
        DatasetError: the dataset directory is missing, or holds no images.
        ConvplatError: no ImageNet run found (or ``--checkpoint`` is not one).
    """
    kind = config.dataset_kind
    if kind == "voc2012":
        from convplat.transfer.voc import transfer_voc

        return transfer_voc(config)
    started = time.perf_counter()
    root = config.root
    if not os.path.isdir(root):
        hint = "pass --data PATH" if kind != "folder" else "check the path"
        raise DatasetError(
            f"dataset directory {root} does not exist: expected {_EXPECTED[kind]} under it; "
            f"{hint} (`convplat demo-data` writes a synthetic data/caltech101)"
        )
    listing = read_dataset(root, kind, include_background=config.background)
    checkpoint = load_checkpoint(config.checkpoint, config.runs)
    mean, quality = load_mean(checkpoint)
    crop = checkpoint.input_size
    if mean.shape[0] < crop:
        raise DatasetError(
            f"the mean image is {mean.shape[0]}x{mean.shape[0]}, smaller than the "
            f"{checkpoint.model} input of {crop}"
        )
    names = [c.name for c in listing.classes]
    num_classes = len(names)
    device = default_device(config.device)
    run = run_location(config)
    write_json(run, "config.json", run_record(config, root, listing, checkpoint, names))

    cuts = config.cuts if "head" in config.modes else ()
    settings: list[dict] = []
    heads: dict[str, torch.Tensor] = {}
    confusions: dict[tuple[str, int], np.ndarray] = {}
    short_classes: dict[str, list[dict]] = {}
    with progress_bar(config.progress) as progress:
        data = gather_features(config, listing, checkpoint, mean, quality, cuts, progress)
        if len(data.kept) == 0:
            raise DatasetError(
                f"none of the {len(listing.items)} images under {root} could be "
                f"decoded (e.g. {data.rejected[0][0]}: {data.rejected[0][1]})"
            )
        counts = np.bincount(data.labels, minlength=num_classes)
        if not (counts >= 2).any():
            raise DatasetError(
                f"every class under {root} has fewer than 2 decodable images: a class needs one "
                "to train on and one to test on"
            )
        rows = [(m, c) for m in config.modes for c in (cuts if m == "head" else (None,))]
        fits = len(config.train_per_class) * config.splits * len(rows)
        task = progress.add_task("protocol", total=fits, rate="")
        transform = make_transform(mean, checkpoint.input_scale)
        for k in config.train_per_class:
            splits = make_splits(
                data.labels, num_classes, k, config.test_per_class, config.splits, config.seed
            )
            short_classes[str(k)] = [{**c, "name": names[c["class"]]} for c in splits[0].short]
            for mode, cut in rows:
                progress.update(task, description=f"{row_label(mode, cut)} {k}/class")
                per_split = []
                for split in splits:
                    if mode == "head":
                        outcome = _head_split(config, data, cut, split, num_classes)
                        if split.index == 0:
                            heads[f"{cut}.train{k}.weight"] = outcome.pop("weight")
                            heads[f"{cut}.train{k}.bias"] = outcome.pop("bias")
                        else:
                            outcome.pop("weight"), outcome.pop("bias")
                        key = (cut, k)
                        confusions[key] = confusions.get(key, 0) + outcome.pop("confusion")
                    else:
                        outcome = _network_split(
                            config,
                            checkpoint,
                            data,
                            mode,
                            split,
                            num_classes,
                            transform,
                            crop,
                            device,
                        )
                    per_split.append(outcome)
                    progress.advance(task)
                settings.append(_summarize(mode, cut, k, per_split))

    results = {
        **result_header(config, root, listing, run, checkpoint, names, data),
        "class_images": np.bincount(data.labels, minlength=num_classes).tolist(),
        "rejected": [{"path": p, "reason": r} for p, r in data.rejected],
        "skipped": [{"path": p, "reason": r} for p, r in listing.skipped],
        "protocol": {
            "train_per_class": list(config.train_per_class),
            "test_per_class": config.test_per_class,
            "splits": config.splits,
            "seed": config.seed,
            "metric": "mean per-class accuracy",
            "augment": config.augment,
        },
        "features": {
            "cuts": list(cuts),
            "executor": data.executor,
            "seconds": round(data.seconds, 3),
            "cache": data.cache,
        },
        "short_classes": short_classes,
        "settings": settings,
        "seconds": 0.0,
    }
    for (cut, k), matrix in confusions.items():
        run.write_bytes(
            f"confusion-{cut}-{k}.png",
            confusion_png(matrix, names, f"head ({cut}), {k}/class, all splits"),
        )
    if heads:
        metadata = {
            "classes": json.dumps(names),
            "checkpoint_sha256": checkpoint.sha256,
            "model": checkpoint.model,
            "inputs": "raw features at the cut (standardisation folded in); split 0",
        }
        run.write_bytes("head.safetensors", save_safetensors(heads, metadata=metadata))
    results["seconds"] = round(time.perf_counter() - started, 3)
    write_json(run, "results.json", results)
    return results


def _head_split(
    config: TransferConfig, data: DatasetFeatures, cut: str, split: Split, num_classes: int
) -> dict:
    tick = time.perf_counter()
    features = data.features[cut]  # (V, N, D)
    labels = data.labels
    fit = fit_head(
        features[:, split.train],
        labels[split.train],
        num_classes,
        weight_decays=config.weight_decays,
        holdout=config.holdout,
        optimizer=config.head_optimizer,
        iters=config.head_iters,
        seed=config.seed * 1009 + split.index,
        device=default_device(config.device),
    )
    predictions = predict_proba(fit.linear, features[:, split.test]).argmax(1).numpy()
    truth = labels[split.test]
    return _split_record(
        split,
        predictions,
        truth,
        num_classes,
        tick,
        weight_decay=fit.weight_decay,
        holdout_scores={
            f"{wd:g}": [round(a, 4), round(nll, 4)] for wd, (a, nll) in fit.scores.items()
        },
        weight=fit.linear.weight.detach().contiguous(),
        bias=fit.linear.bias.detach().contiguous(),
        confusion=confusion_matrix(predictions, truth, num_classes),
    )


def _network_split(
    config: TransferConfig,
    checkpoint: Checkpoint,
    data: DatasetFeatures,
    mode: str,
    split: Split,
    num_classes: int,
    transform,
    crop: int,
    device,
) -> dict:
    tick = time.perf_counter()
    assert data.jpegs is not None
    seed = config.seed * 1009 + split.index
    build = finetune.scratch_model if mode == "scratch" else finetune.pretrained_model
    model = build(checkpoint, num_classes, seed)
    labels = data.labels
    with torch_seeded(seed, device):  # dropout masks: the same whatever ran before
        finetune.train_network(
            model,
            [data.jpegs[i] for i in split.train],
            labels[split.train],
            transform,
            crop=crop,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=seed,
            device=device,
        )
    proba = finetune.predict_network(
        model,
        [data.jpegs[i] for i in split.test],
        transform,
        crop=crop,
        flip=config.augment == "flip",
        batch_size=config.extract_batch_size,
        device=device,
    )
    return _split_record(
        split,
        proba.argmax(1).numpy(),
        labels[split.test],
        num_classes,
        tick,
        epochs=config.epochs,
    )


def _split_record(split: Split, predictions, truth, num_classes: int, tick: float, **extra) -> dict:
    """One split's result: mean per-class accuracy, sizes, time, and mode-specific extras."""
    accuracy, per_class = mean_class_accuracy(predictions, truth, num_classes)
    return {
        "split": split.index,
        "accuracy": accuracy,
        "per_class": per_class,
        "train": int(len(split.train)),
        "test": int(len(split.test)),
        **extra,
        "seconds": round(time.perf_counter() - tick, 3),
    }


def _summarize(mode: str, cut: str | None, k: int, per_split: list[dict]) -> dict:
    """One table cell: mean ± std of the splits' mean per-class accuracies, and details."""
    accuracies = [s["accuracy"] for s in per_split]
    mean, std = mean_std(accuracies)
    stacked = np.stack([s.pop("per_class") for s in per_split])  # (splits, classes), NaN: untested
    tested = np.isfinite(stacked)
    per_class = np.where(
        tested.any(0), np.nansum(stacked, 0) / np.maximum(tested.sum(0), 1), np.nan
    )
    return {
        "mode": mode,
        "cut": cut,
        "train_per_class": k,
        "mean": mean,
        "std": std,
        "label": row_label(mode, cut),
        "per_class": [None if not math.isfinite(v) else round(float(v), 4) for v in per_class],
        "splits": per_split,
    }


def confusion_png(matrix: np.ndarray, names: list[str], title: str = "") -> bytes:
    """Row-normalised confusion matrix (true class down, predicted across) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix, np.float64)
    totals = matrix.sum(1, keepdims=True)
    rates = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    n = len(names)
    side = min(12.0, 3.0 + 0.35 * n)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(
                            j,
                            i,
                            f"{int(matrix[i, j])}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black",
                        )
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
