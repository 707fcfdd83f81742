"""A run's per-epoch metrics as a TensorBoard event file (``tensorboard --logdir runs/``).

The file is rebuilt from the whole history every epoch and written atomically like every other
run output, so a resumed run holds each epoch once and a remote run directory (a pyarrow URI)
works the same as a local one. tensorboardX writes the records.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

EVENT_FILE = "tensorboard/events.out.tfevents.convplat"

# metrics.jsonl key -> TensorBoard tag
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "top1_err": "error/top1",
    "top5_err": "error/top5",
    "lr": "lr",
    "images_per_s": "throughput/images_per_s",
    "data_wait": "throughput/data_wait",
}


def event_file_bytes(history: list[dict]) -> bytes:
    """One event file with a scalar per metric and epoch (step = epoch; wall time = the
    epoch's ``time`` when recorded). Metrics that are None are left out."""
    from tensorboardX import SummaryWriter

    with tempfile.TemporaryDirectory() as directory:
        writer = SummaryWriter(logdir=directory, flush_secs=3600)
        for row in history:
            for key, tag in TAGS.items():
                if row.get(key) is not None:
                    writer.add_scalar(tag, float(row[key]), row["epoch"], walltime=row.get("time"))
        writer.close()
        (path,) = Path(directory).glob("events.out.tfevents.*")
        return path.read_bytes()
