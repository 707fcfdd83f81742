"""Ranking metrics shared by detection (OverFeat §5) and VOC classification transfer (ZFNet
Table 6): average precision from scored predictions, the PASCAL VOC way.

Both tasks reduce to the same question once predictions are matched to the ground truth: a
list of confidences, which of them are hits, and how many positives exist (misses included).
Detections are matched to boxes here too (:func:`match_detections`, :class:`DetectionAP`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

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


# --- detection (O §5; PASCAL VOC / ILSVRC) -----------------------------------------------------

IOU_THRESHOLD = 0.5  # PASCAL VOC / ILSVRC detection: a hit needs IoU >= 0.5


def match_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    iou_threshold: float = IOU_THRESHOLD,
) -> Tensor:
    """Which detections of one image are hits (bool (K,), in the given order).

    ILSVRC/PASCAL rule: per class, detections in descending score order each take the
    unmatched ground-truth box of their class with the highest IoU, if that IoU reaches
    ``iou_threshold``; a detection left without one (a duplicate, a wrong place or a wrong
    class) is a false positive.
    """
    hits = torch.zeros(boxes.shape[0], dtype=torch.bool)
    if boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return hits
    iou = box_iou(boxes.reshape(-1, 4).float(), gt_boxes.reshape(-1, 4).float())  # (K, N)
    iou[labels.reshape(-1, 1) != gt_labels.reshape(1, -1)] = -1.0  # other classes never match
    taken = torch.zeros(gt_boxes.shape[0], dtype=torch.bool)
    for k in scores.argsort(descending=True, stable=True).tolist():
        candidates = iou[k].masked_fill(taken, -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            hits[k] = True
            taken[best] = True
    return hits


class DetectionAP:
    """Per-class average precision over a split, image by image (O §5, PASCAL/ILSVRC AP)."""

    def __init__(self, num_classes: int, iou_threshold: float = IOU_THRESHOLD) -> None:
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.scores: list[list[float]] = [[] for _ in range(num_classes)]
        self.hits: list[list[bool]] = [[] for _ in range(num_classes)]
        self.positives = [0] * num_classes

    def add(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor
    ) -> Tensor:
        """Record one image's detections and ground truth; returns the detections' hits."""
        hits = match_detections(boxes, scores, labels, gt_boxes, gt_labels, self.iou_threshold)
        for label, score, hit in zip(labels.tolist(), scores.tolist(), hits.tolist(), strict=True):
            self.scores[label].append(score)
            self.hits[label].append(hit)
        for label in gt_labels.reshape(-1).tolist():
            self.positives[int(label)] += 1
        return hits

    def result(self, method: str = "area") -> dict:
        """``{"ap": [per class, NaN without ground truth], "map", "positives", "detections"}``;
        mAP averages the classes that have ground-truth boxes (NaN if none has)."""
        ap = [
            average_precision(np.asarray(s), np.asarray(h, bool), p, method)
            for s, h, p in zip(self.scores, self.hits, self.positives, strict=True)
        ]
        defined = [a for a in ap if not math.isnan(a)]
        return {
            "ap": ap,
            "map": float(np.mean(defined)) if defined else float("nan"),
            "positives": list(self.positives),
            "detections": [len(s) for s in self.scores],
            "hits": [int(sum(h)) for h in self.hits],
        }
