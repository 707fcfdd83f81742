"""Box utilities for OverFeat localization and detection (O §4, PAPERS §3.5): IoU, the match
score, the coordinate-average merge and the greedy merge. All boxes are ``xyxy`` pixels.

The paper defines ``match_score`` as "the sum of the distance between the two box centres and
the intersection area" and merges the pair with the *smallest* score while it stays below a
threshold ``t``. Taken literally, a larger intersection would make a *worse* match, and the two
terms have different units (pixels vs pixels²). We read it as the sum of two unit-free
dissimilarities, each 0 for identical boxes:

    match_score(a, b) = |c_a - c_b| / sqrt((area_a + area_b) / 2)  +  (1 - IoU(a, b))

i.e. the centre distance measured in box sides, plus the overlap term turned into a distance
("more intersection = better match", normalised by the union). Two equal squares shifted by a
quarter side score 0.25 + 0.4 = 0.65, by half a side 0.5 + 0.67 = 1.17; disjoint boxes score
at least 1 plus their centre distance.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_area
from torchvision.ops import box_iou as _tv_box_iou

_EPS = 1e-6


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of every pair: (N, 4), (M, 4) xyxy -> (N, M)."""
    return _tv_box_iou(a.float(), b.float())


def box_intersection(a: Tensor, b: Tensor) -> Tensor:
    """Intersection area of every pair: (N, 4), (M, 4) xyxy -> (N, M)."""
    a, b = a.float(), b.float()
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    return (bottom_right - top_left).clamp_min(0).prod(dim=-1)


def box_centres(boxes: Tensor) -> Tensor:
    """Centres of xyxy boxes: (N, 4) -> (N, 2) as (x, y)."""
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def match_score(a: Tensor, b: Tensor) -> Tensor:
    """The greedy merge's dissimilarity of every pair (smaller = better match; 0 = identical).

    (N, 4), (M, 4) xyxy -> (N, M): centre distance in units of the pair's mean box side plus
    ``1 - IoU`` (see the module docstring for why this reading of O §4).
    """
    a, b = a.float(), b.float()
    distance = torch.cdist(box_centres(a), box_centres(b))  # (N, M) pixels
    mean_area = (box_area(a)[:, None] + box_area(b)[None, :]) / 2
    side = mean_area.clamp_min(_EPS).sqrt()
    return distance / side + (1 - box_iou(a, b))


def box_merge(a: Tensor, b: Tensor) -> Tensor:
    """O §4's ``box_merge``: the average of the two boxes' coordinates, (..., 4) each."""
    return (a.float() + b.float()) / 2


def _match_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`match_score` in numpy float64, (N, 4), (M, 4) -> (N, M): the merge loop makes
    thousands of tiny calls, where numpy's per-call cost is ~10x below torch's."""
    centre_a, centre_b = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    distance = np.hypot(*(centre_a[:, None, :] - centre_b[None, :, :]).transpose(2, 0, 1))
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    side = np.sqrt(np.maximum((area_a[:, None] + area_b[None, :]) / 2, _EPS))
    return distance / side + (1 - iou)


def _merge_one_label(
    boxes: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy merge of boxes that share a label; returns the surviving boxes and scores.

    Keeps the full (n, n) score matrix plus each row's minimum so that a merge costs O(n)
    work (one recomputed row/column and the few rows whose minimum pointed at a merged box)
    instead of a fresh O(n²) search.
    """
    boxes, scores = boxes.astype(np.float64), scores.astype(np.float64)
    n = boxes.shape[0]
    alive = np.ones(n, dtype=bool)
    matrix = _match_rows(boxes, boxes)
    np.fill_diagonal(matrix, np.inf)
    row_arg = matrix.argmin(axis=1) if n else np.zeros(0, np.int64)
    row_min = matrix[np.arange(n), row_arg]
    for _ in range(n - 1):
        i = int(row_min.argmin())
        if not row_min[i] <= threshold:  # also stops on inf (nothing left to pair)
            break
        j = int(row_arg[i])
        # The merged box takes slot i; slot j dies.
        boxes[i] = (boxes[i] + boxes[j]) / 2  # box_merge
        scores[i] += scores[j]  # O §4: scores are accumulated
        alive[j] = False
        matrix[j, :] = np.inf
        matrix[:, j] = np.inf
        fresh = _match_rows(boxes[i : i + 1], boxes)[0]
        fresh[~alive] = np.inf
        fresh[i] = np.inf
        matrix[i, :] = fresh
        matrix[:, i] = fresh
        # Rows whose best partner was i or j (and row i itself) need a full recompute;
        # every other row only has to compare against the new column i.
        stale = (row_arg == i) | (row_arg == j)
        stale[i] = True
        better = ~stale & (fresh < row_min)
        row_min[better] = fresh[better]
        row_arg[better] = i
        rows = np.flatnonzero(stale)
        row_arg[rows] = matrix[rows].argmin(axis=1)
        row_min[rows] = matrix[rows, row_arg[rows]]
        row_min[j] = np.inf
    return boxes[alive], scores[alive]


def greedy_merge(
    boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PAPERS §3.5 greedy merge; only boxes of the same label merge.

    Repeatedly merges the best-matching pair (smallest ``match_score``) into the average of
    their coordinates, adding their scores, until the best pair scores above ``threshold``.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) class confidence of the window that predicted each box.
        labels: (N,) class index of each box.
        threshold: the paper's ``t``; larger merges more.

    Returns:
        Merged ``(boxes (K, 4), scores (K,), labels (K,))``, sorted by descending score.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got {tuple(boxes.shape)}")
    if not (scores.shape == labels.shape == boxes.shape[:1]):
        raise ValueError(
            f"expected scores and labels of shape ({boxes.shape[0]},), got "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    device = boxes.device
    boxes, scores, labels = boxes.detach().cpu(), scores.detach().cpu(), labels.detach().cpu()
    out_boxes, out_scores, out_labels = [], [], []
    for label in labels.unique():
        mask = labels == label
        merged, merged_scores = _merge_one_label(
            boxes[mask].double().numpy(), scores[mask].double().numpy(), threshold
        )
        out_boxes.append(torch.from_numpy(merged).float())
        out_scores.append(torch.from_numpy(merged_scores).float())
        out_labels.append(torch.full((merged.shape[0],), int(label), dtype=labels.dtype))
    if not out_boxes:
        return (
            torch.zeros((0, 4), device=device),
            torch.zeros((0,), device=device),
            torch.zeros((0,), dtype=labels.dtype, device=device),
        )
    merged_boxes = torch.cat(out_boxes)
    merged_scores = torch.cat(out_scores)
    merged_labels = torch.cat(out_labels)
    order = merged_scores.argsort(descending=True, stable=True)
    return (
        merged_boxes[order].to(device),
        merged_scores[order].to(device),
        merged_labels[order].to(device),
    )
