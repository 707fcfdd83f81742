"""Ranking metrics shared by detection (OverFeat §5) and VOC classification transfer (ZFNet
Table 6): average precision from scored predictions, the PASCAL VOC way.

Both tasks reduce to the same question once predictions are matched to the ground truth: a
list of confidences, which of them are hits, and how many positives exist (misses included).
"""

from __future__ import annotations

import numpy as np

AP_METHODS = ("area", "11point")


def precision_recall(
    scores: np.ndarray, hits: np.ndarray, num_positives: int
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each prediction, in descending score order.

    Ties keep their given order (a stable sort), so results do not depend on the sort
    algorithm. ``num_positives`` counts every ground-truth positive, found or not.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    hits = np.asarray(hits, dtype=bool).reshape(-1)
    if scores.shape != hits.shape:
        raise ValueError(f"scores and hits differ in length: {scores.size} vs {hits.size}")
    if num_positives < int(hits.sum()):
        raise ValueError(f"num_positives={num_positives} is below the {int(hits.sum())} hits")
    order = np.argsort(-scores, kind="stable")
    true_pos = np.cumsum(hits[order])
    ranks = np.arange(1, scores.size + 1)
    precision = true_pos / ranks
    recall = true_pos / num_positives if num_positives > 0 else np.zeros_like(precision)
    return precision, recall


def average_precision(
    scores: np.ndarray, hits: np.ndarray, num_positives: int, method: str = "area"
) -> float:
    """PASCAL VOC average precision.

    ``area`` (VOC 2010 onwards, used for VOC 2012 and ILSVRC detection here): area under the
    precision-recall curve after making precision monotonically non-increasing.
    ``11point`` (VOC 2007): mean of the interpolated precision at recall 0, 0.1, ..., 1.
    With no positives AP is undefined; returns NaN so callers can leave the class out.
    """
    if method not in AP_METHODS:
        raise ValueError(f"method: expected one of {', '.join(AP_METHODS)}, got {method!r}")
    if num_positives <= 0:
        return float("nan")
    precision, recall = precision_recall(scores, hits, num_positives)
    if method == "11point":
        points = [
            precision[recall >= t].max() if np.any(recall >= t) else 0.0
            for t in np.linspace(0.0, 1.0, 11)
        ]
        return float(np.mean(points))
    # Envelope: precision at recall r = best precision at any recall >= r.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
