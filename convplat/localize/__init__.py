"""OverFeat (Sermanet et al. 2014): dense multi-scale scoring and offset pooling
(``convplat.training.dense``, shared with `convplat evaluate --mode dense`, re-exported here),
box utilities and the greedy merge (boxes.py), the regressor at several scales
(multiscale.py), localization (localize.py trains, localize_eval.py scores) and detection
(detect.py trains, detect_eval.py scores); their settings are config.py. Localization and
detection build on ``offset_pool`` / ``interleave`` / ``window_boxes``.
"""

from convplat.config.localize import DetectConfig, LocalizeConfig
from convplat.localize.boxes import box_iou, box_merge, greedy_merge, match_score
from convplat.localize.detect import train_detector
from convplat.localize.detect_eval import evaluate_detector
from convplat.localize.localize import train_localizer
from convplat.localize.localize_eval import evaluate_localizer
from convplat.training.dense import (
    PAPER_SCALES,
    PAPER_TABLE_SIZES,
    STRIDES,
    dense_map,
    dense_scores,
    interleave,
    offset_count,
    offset_pool,
    parse_scales,
    rescale,
    scaled_size,
    window_boxes,
    window_crop,
    window_logits,
    window_step,
)

__all__ = [
    "DetectConfig",
    "LocalizeConfig",
    "box_iou",
    "box_merge",
    "evaluate_detector",
    "evaluate_localizer",
    "greedy_merge",
    "match_score",
    "train_detector",
    "train_localizer",
    "PAPER_SCALES",
    "PAPER_TABLE_SIZES",
    "STRIDES",
    "dense_map",
    "dense_scores",
    "interleave",
    "offset_count",
    "offset_pool",
    "parse_scales",
    "rescale",
    "scaled_size",
    "window_boxes",
    "window_crop",
    "window_logits",
    "window_step",
]
