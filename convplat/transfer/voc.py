"""`transfer(voc2012 config)`: ZFNet §5.3 / Table 6 on PASCAL VOC 2012 classification.

VOC differs from Caltech: a fixed train/val split (the test labels are not public, so val is
the test set here), several classes per image, and per-class average precision as the metric.
A multi-label head (per-class sigmoids, or one 20-way softmax against the present classes) is
trained on frozen features of the train images, or the whole network (``scratch``, ``full``)
end to end, and scored on val the way the devkit scores classification. Writes
``<out>/transfer-voc2012-<stamp>/``: ``config.json``, ``results.json``, ``head.safetensors``
and ``ap-<setting>.png`` (see docs/transfer.md).
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
from convplat.pipeline.readers import VOC_CLASSES, VocListing, read_voc
from convplat.progress import progress_bar
from convplat.training.checkpoints import write_json
from convplat.transfer import finetune
from convplat.transfer.checkpoint import Checkpoint, load_checkpoint
from convplat.transfer.extract import default_device, make_transform
from convplat.transfer.gather import DatasetFeatures
from convplat.transfer.heads import fit_multilabel_head, multilabel_loss, predict_scores
from convplat.transfer.protocol import class_average_precisions, row_label
from convplat.transfer.runs import (
    gather_features,
    load_mean,
    result_header,
    run_location,
    run_record,
    torch_seeded,
)

METRIC = "average precision (VOC 2012 area method, per class; 0-labelled images ignored)"


def transfer_voc(config: TransferConfig) -> dict:
    """Run the VOC 2012 classification transfer of ``config``; returns the results dict.

    Raises:
        DatasetError: no VOC tree at the root, no decodable image, or an empty split.
        ConvplatError: no ImageNet run found (or ``--checkpoint`` is not one).
    """
    started = time.perf_counter()
    root = config.root
    if not os.path.isdir(root):
        raise DatasetError(
            f"dataset directory {root} does not exist: expected VOCdevkit/VOC2012 with "
            "JPEGImages/, Annotations/ and ImageSets/Main/; pass --data PATH "
            "(`convplat demo-data` writes a synthetic data/VOCdevkit/VOC2012)"
        )
    listing = read_voc(root)
    checkpoint = load_checkpoint(config.checkpoint, config.runs)
    mean, quality = load_mean(checkpoint)
    crop = checkpoint.input_size
    if mean.shape[0] < crop:
        raise DatasetError(
            f"the mean image is {mean.shape[0]}x{mean.shape[0]}, smaller than the "
            f"{checkpoint.model} input of {crop}"
        )
    names = list(VOC_CLASSES)
    run = run_location(config)
    write_json(run, "config.json", run_record(config, root, listing, checkpoint, names))
    cuts = config.cuts if "head" in config.modes else ()
    rows = [(m, c) for m in config.modes for c in (cuts if m == "head" else (None,))]
    settings: list[dict] = []
    heads: dict[str, torch.Tensor] = {}
    with progress_bar(config.progress) as progress:
        data = gather_features(config, listing, checkpoint, mean, quality, cuts, progress)
        targets, train, val = _split(listing, data, root)
        transform = make_transform(mean, checkpoint.input_scale)
        task = progress.add_task("protocol", total=len(rows), rate="")
        for mode, cut in rows:
            progress.update(task, description=f"{row_label(mode, cut)} voc2012")
            tick = time.perf_counter()
            if mode == "head":
                fit = fit_multilabel_head(
                    data.features[cut][:, train],
                    targets[train],
                    kind=config.voc_loss,
                    weight_decays=config.weight_decays,
                    holdout=config.holdout,
                    iters=config.head_iters,
                    seed=config.seed,
                    device=default_device(config.device),
                )
                scores = predict_scores(fit.linear, data.features[cut][:, val], config.voc_loss)
                heads[f"{cut}.weight"] = fit.linear.weight.detach().contiguous()
                heads[f"{cut}.bias"] = fit.linear.bias.detach().contiguous()
                extra = {
                    "weight_decay": fit.weight_decay,
                    "holdout_scores": {
                        f"{wd:g}": [round(a, 4), round(loss, 4)]
                        for wd, (a, loss) in fit.scores.items()
                    },
                }
            else:
                scores = _network_scores(
                    config, checkpoint, data, mode, transform, targets, train, val
                )
                extra = {"epochs": config.epochs}
            ap = class_average_precisions(scores.numpy(), targets[val])
            settings.append(_setting(mode, cut, ap, tick, extra))
            run.write_bytes(
                f"ap-{row_label(mode, cut).replace(' (', '-').rstrip(')')}.png",
                ap_png(ap, names, f"{row_label(mode, cut)}: VOC 2012 val"),
            )
            progress.advance(task)

    parts = {"train": train, "val": val}
    results = {
        **result_header(config, root, listing, run, checkpoint, names, data),
        "split_images": {s: int(len(i)) for s, i in parts.items()},
        # Per class and split: images labelled 1, and images labelled 0 (difficult only).
        "positives": {s: (targets[i] == 1).sum(0).tolist() for s, i in parts.items()},
        "difficult": {s: (targets[i] == 0).sum(0).tolist() for s, i in parts.items()},
        "rejected": [{"path": p, "reason": r} for p, r in data.rejected],
        "skipped": [{"path": p, "reason": r} for p, r in listing.skipped],
        "protocol": {
            "train": "train",
            "test": "val",
            "metric": METRIC,
            "loss": config.voc_loss,
            "augment": config.augment,
            "seed": config.seed,
        },
        "features": {
            "cuts": list(cuts),
            "executor": data.executor,
            "seconds": round(data.seconds, 3),
            "cache": data.cache,
        },
        "settings": settings,
        "seconds": 0.0,
    }
    if heads:
        metadata = {
            "classes": json.dumps(names),
            "checkpoint_sha256": checkpoint.sha256,
            "model": checkpoint.model,
            "inputs": "raw features at the cut (standardisation folded in)",
            "outputs": f"{config.voc_loss} scores per class",
        }
        run.write_bytes("head.safetensors", save_safetensors(heads, metadata=metadata))
    results["seconds"] = round(time.perf_counter() - started, 3)
    write_json(run, "results.json", results)
    return results


def _split(
    listing: VocListing, data: DatasetFeatures, root: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets ``(N, 20)`` of the decodable images and their train / val positions."""
    if len(data.kept) == 0:
        raise DatasetError(
            f"none of the {len(listing.items)} images under {root} could be decoded "
            f"(e.g. {data.rejected[0][0]}: {data.rejected[0][1]})"
        )
    targets = np.asarray(listing.targets, np.int8)[data.kept]
    splits = np.array([listing.items[i].split for i in data.kept])
    train, val = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
    for name, idx in (("train", train), ("val", val)):
        if not (targets[idx] == 1).any():
            raise DatasetError(
                f"the {name} split under {root} has no decodable image with a labelled object: "
                f"expected ImageSets/Main/{name}.txt and <class>_{name}.txt with 1 labels"
            )
    return targets, train, val


def _network_scores(
    config: TransferConfig,
    checkpoint: Checkpoint,
    data: DatasetFeatures,
    mode: str,
    transform,
    targets: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
) -> torch.Tensor:
    """Modes scratch / full: train the whole network with the multi-label loss, score val."""
    assert data.jpegs is not None
    build = finetune.scratch_model if mode == "scratch" else finetune.pretrained_model
    model = build(checkpoint, len(VOC_CLASSES), config.seed)
    device = default_device(config.device)
    with torch_seeded(config.seed, device):  # dropout masks: the same whatever ran before
        finetune.train_network(
            model,
            [data.jpegs[i] for i in train],
            targets[train],
            transform,
            crop=checkpoint.input_size,
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            device=device,
            loss=lambda logits, t: multilabel_loss(logits, t, config.voc_loss),
        )
    return finetune.predict_network(
        model,
        [data.jpegs[i] for i in val],
        transform,
        crop=checkpoint.input_size,
        flip=config.augment == "flip",
        batch_size=config.extract_batch_size,
        device=device,
        activation=config.voc_loss,
    )


def _setting(mode: str, cut: str | None, ap: np.ndarray, tick: float, extra: dict) -> dict:
    finite = np.isfinite(ap)
    return {
        "mode": mode,
        "cut": cut,
        "label": row_label(mode, cut),
        "mean": float(ap[finite].mean()) if finite.any() else float("nan"),
        "classes_scored": int(finite.sum()),
        "per_class": [round(float(v), 4) if math.isfinite(v) else None for v in ap],
        **extra,
        "seconds": round(time.perf_counter() - tick, 3),
    }


def ap_png(ap: np.ndarray, names: list[str], title: str = "") -> bytes:
    """Per-class average precision as a horizontal bar chart (PNG bytes); the mean as a line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ap = np.asarray(ap, np.float64)
    fig = Figure(figsize=(6.5, 0.25 * len(names) + 1.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(names))
    shown = np.nan_to_num(100 * ap, nan=0.0)
    ax.barh(y, shown, color=["tab:blue" if np.isfinite(v) else "lightgrey" for v in ap])
    for i, v in enumerate(ap):
        ax.text(
            1 if not np.isfinite(v) else shown[i] + 1,
            i,
            "no val positive" if not np.isfinite(v) else f"{100 * v:.1f}",
            va="center",
            fontsize=7,
        )
    if np.isfinite(ap).any():
        m = 100 * float(np.nanmean(ap))
        ax.axvline(m, color="tab:red", linestyle="--", label=f"mean {m:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 110), xlabel="average precision %", title=title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
