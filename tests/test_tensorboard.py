"""The TensorBoard event file: every epoch once, the values of metrics.jsonl, None left out."""

from __future__ import annotations

import pytest
from tensorboard_events import read_scalars

from convplat.training.tensorboard import TAGS, event_file_bytes


def test_event_file_round_trip():
    history = [
        {
            "epoch": 1,
            "lr": 0.01,
            "train_loss": 2.5,
            "val_loss": 2.25,
            "top1_err": 0.75,
            "top5_err": 0.25,
            "images_per_s": 100.0,
            "data_wait": 0.1,
            "time": 1_700_000_000.0,
        },
        {
            "epoch": 2,
            "lr": 0.001,
            "train_loss": 1.5,
            "val_loss": None,
            "top1_err": None,
            "top5_err": None,
            "images_per_s": 120.0,
            "data_wait": 0.05,
            "time": 1_700_000_060.0,
        },
    ]
    scalars = read_scalars(event_file_bytes(history))
    assert scalars["loss/train"] == [(1, 2.5), (2, 1.5)]
    assert scalars["error/top1"] == [(1, 0.75)]  # None: left out, not written as 0 or NaN
    assert [s for s, _ in scalars["lr"]] == [1, 2]
    assert [v for _, v in scalars["lr"]] == pytest.approx([0.01, 0.001])
    assert set(scalars) == set(TAGS.values())
    # Rebuilt from the history each epoch: writing it again gives the same scalars.
    assert read_scalars(event_file_bytes(history)) == scalars
