"""PNGs of localization and detection results: sample images with true boxes (green) and the
guesses or detections (red), rendered with matplotlib's Agg backend."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402


def _rectangle(box: Sequence[float], **style) -> Rectangle:
    x0, y0, x1, y1 = (float(v) for v in box)
    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, **style)


def boxes_png(pictures: Sequence[tuple], names: Sequence[str], columns: int = 4) -> bytes:
    """Grid of images with boxes as PNG bytes.

    Args:
        pictures: ``(image (H, W, 3) uint8, label, true boxes (K, 4), guesses)`` per image;
            each guess has ``label``, ``box`` (xyxy) and ``score``.
        names: class names by index, for the titles.
    """
    count = max(1, len(pictures))
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, label, truth, answers) in zip(axes.flat, pictures, strict=False):
        ax.imshow(np.asarray(image))
        for box in np.asarray(truth).reshape(-1, 4):
            ax.add_patch(_rectangle(box, edgecolor="lime", linewidth=2))
        for rank, answer in reversed(list(enumerate(answers))):
            style = (
                {"edgecolor": "red", "linewidth": 2}
                if rank == 0
                else {"edgecolor": "orange", "linewidth": 1, "linestyle": "--"}
            )
            ax.add_patch(_rectangle(answer.box, **style))
        guess = names[answers[0].label] if answers else "-"
        mark = "ok" if answers and answers[0].label == label else "x"
        ax.set_title(f"true {names[label]}\nguess {guess} ({mark})", fontsize=8)
    fig.suptitle("localization: true boxes green, top-1 red, top-2..5 orange", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # leave room for the suptitle
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def detections_png(shown: list[tuple], class_names: list[str]) -> bytes:
    """Predicted (red, with class and score) and true (green) boxes on a few images, as PNG.

    ``shown``: ``(sample, boxes, scores, labels, hits)`` per image, as ``evaluate_detector``
    collects them; dashed red boxes are false positives.
    """
    count = max(1, len(shown))
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (sample, boxes, scores, labels, hits) in zip(axes.flat, shown, strict=False):
        ax.imshow(sample.image)
        for x0, y0, x1, y1 in sample.boxes.tolist():
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=2))
        for (x0, y0, x1, y1), score, label, hit in zip(
            boxes.tolist(), scores.tolist(), labels.tolist(), hits.tolist(), strict=True
        ):
            ax.add_patch(
                Rectangle(
                    (x0, y0),
                    x1 - x0,
                    y1 - y0,
                    fill=False,
                    ec="red",
                    lw=1.5,
                    ls="-" if hit else "--",
                )
            )
            ax.text(
                x0,
                y0,
                f"{class_names[label]} {score:.2f}",
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"fc": "red", "alpha": 0.6, "pad": 1, "lw": 0},
            )
        ax.set_title(f"{sample.key}: {len(sample.boxes)} true, {len(boxes)} found", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()
