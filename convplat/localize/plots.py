"""PNG of localization results: sample images with true boxes (green) and the top guesses
(top-1 solid red, the other guesses dashed orange), rendered with matplotlib's Agg backend."""

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
