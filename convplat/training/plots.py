"""Training curves as a PNG: loss and top-1/top-5 error per epoch."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curves_png(history: list[dict], title: str = "") -> bytes:
    """Two panels (loss; error rates) over epochs, as PNG bytes."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    if any(row.get("val_loss") is not None for row in history):
        ax_loss.plot(epochs, [row.get("val_loss") for row in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    for key, label in (("top1_err", "top-1 error"), ("top5_err", "top-5 error")):
        if any(row.get(key) is not None for row in history):
            ax_err.plot(epochs, [row.get(key) for row in history], "o-", label=label)
    ax_err.set(xlabel="epoch", ylabel="validation error", title="validation error", ylim=(0, 1))
    ax_err.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
