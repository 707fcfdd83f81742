"""OverFeat inference pieces: dense multi-scale scoring and offset pooling (dense.py).

Localization and detection build on ``offset_pool`` / ``interleave`` / ``window_boxes``.
"""

from convplat.localize.dense import (
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
