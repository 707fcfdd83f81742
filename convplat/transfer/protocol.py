"""ZFNet's transfer protocol (§5.2, PAPERS.md §2.6): seeded per-class train/test splits, the
mean of per-class accuracies, mean ± std over splits, and the table of Tables 4-5; for PASCAL
VOC 2012 (Table 6) the per-class average precision, VOC style, and its table.

Pure numpy: no model, no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from convplat.metrics import average_precision


@dataclass(frozen=True)
class Split:
    """One random train/test split of a dataset at ``train_per_class`` images per class.

    ``train``/``test`` index the labels array the split was drawn from. ``short`` lists the
    classes that could not get ``train_per_class`` train images (or were left out entirely),
    as dicts ``{"class", "images", "train", "test"}``.
    """

    index: int
    train_per_class: int
    train: np.ndarray
    test: np.ndarray
    short: list[dict] = field(default_factory=list)


def split_rng(seed: int, train_per_class: int, index: int) -> np.random.Generator:
    """The generator of split ``index`` at one train size (independent of every other split)."""
    return np.random.default_rng([seed, train_per_class, index])


def make_splits(
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    train_per_class: int,
    test_per_class: int = 50,
    splits: int = 5,
    seed: int = 0,
) -> list[Split]:
    """Draw ``splits`` random splits: per class ``train_per_class`` train images and up to
    ``test_per_class`` test images from the rest (Fei-Fei et al.; ZFNet §5.2).

    A class with ``n <= train_per_class`` images keeps at least one image for testing: it
    trains on ``n - 1`` and tests on the one left. A class with fewer than 2 images cannot be
    split and is left out of both sets. Both cases are reported in ``Split.short``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if train_per_class < 1 or test_per_class < 1 or splits < 1:
        raise ValueError(
            f"expected train_per_class, test_per_class, splits >= 1, got "
            f"{train_per_class}, {test_per_class}, {splits}"
        )
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    out = []
    for s in range(splits):
        rng = split_rng(seed, train_per_class, s)
        train, test, short = [], [], []
        for c, idx in enumerate(members):
            n = len(idx)
            if n < 2:
                short.append({"class": c, "images": n, "train": 0, "test": 0})
                continue
            order = idx[rng.permutation(n)]
            n_train = min(train_per_class, n - 1)
            n_test = min(test_per_class, n - n_train)
            train.append(order[:n_train])
            test.append(order[n_train : n_train + n_test])
            if n_train < train_per_class:
                short.append({"class": c, "images": n, "train": n_train, "test": n_test})
        out.append(
            Split(
                s,
                train_per_class,
                np.sort(np.concatenate(train)) if train else np.zeros(0, np.int64),
                np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64),
                short,
            )
        )
    return out


def holdout_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``labels``) to fit on and to validate on, stratified by class.

    Each class with ``t >= 2`` images holds out ``max(1, round(fraction * t))`` of them (at most
    ``t - 1``); classes with one image are only fitted. ``fraction == 0`` holds out nothing.
    """
    labels = np.asarray(labels)
    fit, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        t = len(idx)
        h = 0 if fraction <= 0 or t < 2 else min(t - 1, max(1, round(fraction * t)))
        held.append(idx[:h])
        fit.append(idx[h:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def mean_class_accuracy(
    predictions: Sequence[int] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    num_classes: int | None = None,
) -> tuple[float, np.ndarray]:
    """The mean over classes of each class's accuracy (Caltech protocol), and those accuracies.

    Classes with no test sample are NaN in the per-class array and left out of the mean, so a
    large class counts as much as a small one.
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"expected equal shapes, got {predictions.shape} and {labels.shape}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    totals = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[predictions == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(totals > 0, correct / totals, np.nan)
    present = totals > 0
    mean = float(per_class[present].mean()) if present.any() else float("nan")
    return mean, per_class


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``(num_classes, num_classes)``: row = true class, column = predicted class."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, -1)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single split)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return float(values.mean()), std


def row_label(mode: str, cut: str | None) -> str:
    """Table row name: ``head (fc7)``, ``scratch``, ``full``."""
    return f"{mode} ({cut})" if mode == "head" and cut else mode


def class_average_precisions(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision ``(C,)`` the VOC 2012 way (the devkit's ``VOCevalcls``).

    For class c the images are ranked by ``scores[:, c]``; hits are the images labelled 1 in
    ``targets[:, c]``, images labelled 0 ("difficult" only) are dropped - the devkit counts them
    neither as true nor as false positives - and AP is the area under the precision-recall
    envelope. A class without a positive image is NaN (left out of the mean).
    """
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"expected equal (N, C) shapes, got {scores.shape} and {targets.shape}")
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        keep = targets[:, c] != 0
        hits = targets[keep, c] == 1
        out[c] = average_precision(scores[keep, c], hits, int(hits.sum()), method="area")
    return out


def format_voc_table(results: dict) -> str:
    """VOC results like ZFNet Table 6: rows = classes and their mean, columns = settings,
    cells = average precision in % on the val split ("-": no positive val image)."""
    settings = results.get("settings", [])
    classes = results.get("classes", [])
    header = ["", *[s["label"] for s in settings]]

    def cell(value) -> str:
        return "-" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"

    body = [[name, *[cell(s["per_class"][c]) for s in settings]] for c, name in enumerate(classes)]
    body.append(["mean", *[cell(s["mean"]) for s in settings]])
    counts = results.get("split_images", {})
    title = (
        f"{results.get('dataset', '?')}: {len(classes)} classes, {counts.get('train', '?')} "
        f"train / {counts.get('val', '?')} val images; average precision % on val (VOC 2012 "
        "area method; mean over classes with a val positive)"
    )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [title]
    for r in [header, *body]:
        lines.append(
            "  ".join(
                c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)
            ).rstrip()
        )
    rejected = results.get("rejected", [])
    if rejected:
        lines.append(f"note: {len(rejected)} files could not be decoded (see results.json)")
    return "\n".join(lines)


def format_table(results: dict) -> str:
    """The results as a text table like ZFNet Tables 4-5: rows = mode (and cut for heads),
    columns = train images per class, cells = mean ± std of mean per-class accuracy in %.
    VOC results get Table 6's layout (``format_voc_table``)."""
    if results.get("dataset") == "voc2012":
        return format_voc_table(results)
    settings = results.get("settings", [])
    sizes = list(results.get("protocol", {}).get("train_per_class", []))
    if not sizes:
        sizes = sorted({s["train_per_class"] for s in settings})
    rows: dict[str, dict[int, str]] = {}
    for s in settings:
        mean, std = 100 * s["mean"], 100 * s["std"]
        cell = f"{mean:.1f} ± {std:.1f}" if math.isfinite(mean) else "-"
        rows.setdefault(row_label(s["mode"], s.get("cut")), {})[s["train_per_class"]] = cell
    protocol = results.get("protocol", {})
    title = (
        f"{results.get('dataset', '?')}: {len(results.get('classes', []))} classes, "
        f"{results.get('images', '?')} images; mean per-class accuracy %, mean ± std over "
        f"{protocol.get('splits', '?')} splits (test: up to {protocol.get('test_per_class', '?')}"
        " per class)"
    )
    header = ["", *[f"{k}/class" for k in sizes]]
    body = [[label, *[cells.get(k, "") for k in sizes]] for label, cells in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [title]
    for r in [header, *body]:
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(r)
            ).rstrip()
        )
    classes = results.get("classes", [])
    for k, short in sorted(results.get("short_classes", {}).items(), key=lambda kv: int(kv[0])):
        if not short:
            continue
        shown = ", ".join(
            f"{classes[c['class']] if c['class'] < len(classes) else c['class']} "
            f"({c['images']}: {c['train']} train/{c['test']} test)"
            for c in short[:4]
        )
        more = f" and {len(short) - 4} more" if len(short) > 4 else ""
        lines.append(f"note: {k}/class: {len(short)} classes too small: {shown}{more}")
    rejected = results.get("rejected", [])
    if rejected:
        lines.append(f"note: {len(rejected)} files could not be decoded (see results.json)")
    return "\n".join(lines)
