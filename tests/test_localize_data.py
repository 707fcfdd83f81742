"""Localization and detection batches come from the shared shard streams: loader processes
decode them, and evaluation reads every sample exactly once over ranks x loader workers."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import simplejpeg
import torch
import webdataset as wds

import convplat.localize.box_data as box_data
import convplat.localize.detection_data as detection_data
from convplat.errors import DatasetError
from convplat.localize.box_data import eval_box_loader, train_box_loader
from convplat.localize.detection_data import eval_detection_loader, train_detection_loader

S = 32
BOX = [4.0, 6.0, 20.0, 24.0]


def boxed(n: int) -> bool:
    return n % 4 != 3  # every fourth sample has no box


def write_box_shards(root: Path, counts: dict[str, list[int]]) -> tuple[Path, dict]:
    """Shards as `prepare` writes them (jpg, cls, json with boxes, index.parquet); returns the
    directory and each split's keys in manifest order."""
    root.mkdir(parents=True)
    splits, keys, rows, n = {}, {}, [], 0
    for split, shard_counts in counts.items():
        shards, keys[split] = [], []
        for i, count in enumerate(shard_counts):
            name = f"{split}-{i:06d}.tar"
            with wds.TarWriter(str(root / name)) as sink:
                for _ in range(count):
                    key, label = f"{split}_{n:04d}", n % 3
                    boxes = [BOX] if boxed(n) else []
                    meta = {"label": label, "boxes": boxes, "box_labels": [label] * len(boxes)}
                    image = np.full((S, S, 3), n % 256, np.uint8)
                    sink.write(
                        {
                            "__key__": key,
                            "jpg": simplejpeg.encode_jpeg(image, quality=95),
                            "cls": str(label).encode(),
                            "json": json.dumps(meta).encode(),
                        }
                    )
                    keys[split].append(key)
                    rows.append({"key": key, "split": split, "boxes": boxes})
                    n += 1
            shards.append({"name": name, "count": count})
        splits[split] = {"count": sum(shard_counts), "shards": shards}
    manifest = {"format_version": 1, "size": S, "crop": True, "splits": splits}
    (root / "manifest.json").write_text(json.dumps(manifest))
    pq.write_table(pa.Table.from_pylist(rows), root / "index.parquet")
    return root, keys


@pytest.fixture(scope="module")
def box_shards(tmp_path_factory) -> tuple[Path, dict]:
    """16 train samples (12 with a box) in 4 shards, 9 val samples in 3 shards."""
    return write_box_shards(
        tmp_path_factory.mktemp("boxes") / "shards", {"train": [4, 4, 4, 4], "val": [4, 3, 2]}
    )


@pytest.fixture
def tag_process(monkeypatch):
    """Decoding appends ``@<pid>:<loader worker id>`` to each key (the loader processes are
    forked, so they run the patched functions)."""

    def tag(key: str) -> str:
        info = torch.utils.data.get_worker_info()
        return f"{key}@{os.getpid()}:{'main' if info is None else info.id}"

    decode_sample = box_data.decode_sample
    to_sample = detection_data._to_sample

    def tagged_box(sample, frame):
        image, label, boxes, key = decode_sample(sample, frame)
        return image, label, boxes, tag(key)

    def tagged_detection(raw):
        sample = to_sample(raw)
        return replace(sample, key=tag(sample.key))

    monkeypatch.setattr(box_data, "decode_sample", tagged_box)
    monkeypatch.setattr(detection_data, "_to_sample", tagged_detection)


def split_tag(keys: list[str]) -> tuple[list[str], set[str], set[str]]:
    """(sample keys, pids, loader worker ids) of tagged keys."""
    names, places = zip(*(k.split("@") for k in keys), strict=True)
    pids, workers = zip(*(p.split(":") for p in places), strict=True)
    return list(names), set(pids), set(workers)


# --------------------------------------------------------------------------- training
def test_box_training_decodes_in_loader_processes(box_shards, tag_process):
    root, keys = box_shards
    loader = train_box_loader(root, batch_size=2, num_workers=2, seed=3)
    assert len(loader) == 12 // 2  # the boxed samples only
    for epoch in (1, 2):  # the same processes serve both epochs
        batches = list(loader.epoch(epoch))
        assert len(batches) == 6 and all(len(b.keys) == 2 for b in batches)
        names, pids, workers = split_tag([k for b in batches for k in b.keys])
        assert str(os.getpid()) not in pids and len(pids) == 2 and workers == {"0", "1"}
        boxed_keys = {k for i, k in enumerate(keys["train"]) if boxed(i)}
        assert set(names) <= boxed_keys and len(set(names)) == len(names)  # no repeats
        for batch in batches:
            assert batch.images.shape == (2, S, S, 3) and batch.images.dtype == torch.uint8
            assert all(torch.equal(b, torch.tensor([BOX])) for b in batch.boxes)


def test_detection_training_decodes_in_loader_processes(box_shards, tag_process):
    root, keys = box_shards
    loader = train_detection_loader(root, batch_size=2, world_size=2, rank=1, num_workers=2)
    batches = list(loader.epoch(1))
    assert len(batches) == len(loader) == 16 // 4
    samples = [s for batch in batches for s in batch]
    names, pids, workers = split_tag([s.key for s in samples])
    assert str(os.getpid()) not in pids and len(pids) == 2 and workers == {"0", "1"}
    assert set(names) <= set(keys["train"])
    assert all(s.image.shape == (S, S, 3) and s.boxes.shape[1] == 4 for s in samples)


def test_box_training_in_the_main_process_gives_the_same_kind_of_batches(box_shards):
    root, _ = box_shards
    loader = train_box_loader(root, batch_size=3, num_workers=0, seed=3)
    first = [b.keys for b in loader.epoch(1)]
    assert len(first) == 4 and first == [b.keys for b in loader.epoch(1)]  # seeded
    assert first != [b.keys for b in loader.epoch(2)]


def test_a_stream_without_boxes_is_one_line(tmp_path):
    root, _ = write_box_shards(tmp_path / "none", {"train": [3]})
    rows = pq.read_table(root / "index.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist([{**r, "boxes": []} for r in rows]), root / "index.parquet")
    with pytest.raises(DatasetError, match="no training sample has a box"):
        train_box_loader(root, batch_size=1, num_workers=0)


# --------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("limit", [0, 5])
@pytest.mark.parametrize("which", ["box", "detection"])
def test_evaluation_reads_each_sample_once_over_ranks_and_workers(
    box_shards, tag_process, which, limit
):
    root, keys = box_shards
    want = keys["val"][:limit] if limit else keys["val"]
    seen, indices, all_pids = [], [], set()
    for rank in range(2):  # 2 ranks x 2 loader workers
        if which == "box":
            loader = eval_box_loader(
                root, batch_size=2, rank=rank, world_size=2, num_workers=2, limit=limit
            )
            batches = list(loader)
            tagged = [k for b in batches for k in b.keys]
            indices += [i for b in batches for i in b.indices]
        else:
            loader = eval_detection_loader(
                root, batch_size=2, rank=rank, world_size=2, num_workers=2, limit=limit
            )
            batches = list(loader)
            tagged = [s.key for b in batches for s in b]
            indices += [s.index for b in batches for s in b]
        assert len(batches) == len(loader)
        names, pids, _ = split_tag(tagged)
        seen += names
        all_pids |= pids
    assert Counter(seen) == Counter(want)  # every sample once, boxless ones included
    assert sorted(indices) == list(range(len(want)))  # and its place in the split
    assert [want[i] for i in indices] == seen
    assert str(os.getpid()) not in all_pids and len(all_pids) >= 2
