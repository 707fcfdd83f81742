"""Shard loaders: equal batch counts on every rank, seeded orders, exact evaluation coverage."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch
import webdataset as wds
from conftest import make_imagenet_tree

from convplat.config import PrepareConfig
from convplat.errors import ConfigError, DatasetError
from convplat.pipeline import prepare
from convplat.pipeline.shardset import assign_shards, load_stats, read_manifest
from convplat.training.augment import BatchTransform, TenCrop
from convplat.training.data import TrainLoader, eval_loader, num_batches, train_loader

S = 32  # image (frame) size of the test shards
CROP = 24


def pattern(label: int) -> np.ndarray:
    """R encodes the column, G the row (8 levels per pixel), B the label: crops are traceable."""
    y, x = np.mgrid[0:S, 0:S]
    return np.stack([x * 8, y * 8, np.full_like(x, label % 256)], axis=-1).astype(np.uint8)


def write_shards(root: Path, counts: dict[str, list[int]], size: int = S) -> Path:
    """Shards as `convplat prepare` lays them out; labels are the global sample index."""
    root.mkdir(parents=True, exist_ok=True)
    splits, label = {}, 0
    for split, shard_counts in counts.items():
        shards = []
        for index, count in enumerate(shard_counts):
            name = f"{split}-{index:06d}.tar"
            with wds.TarWriter(str(root / name)) as sink:
                for _ in range(count):
                    image = pattern(label) if size == S else np.full((size, size, 3), 99, np.uint8)
                    sink.write(
                        {
                            "__key__": f"{split}_{label:05d}",
                            "jpg": simplejpeg.encode_jpeg(image, quality=100),
                            "cls": str(label).encode(),
                            "json": json.dumps({"label": label}).encode(),
                        }
                    )
                    label += 1
            shards.append({"name": name, "count": count})
        splits[split] = {"count": sum(shard_counts), "shards": shards}
    manifest = {"format_version": 1, "size": size, "crop": True, "splits": splits}
    (root / "manifest.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(0)
    np.savez(
        root / "stats.npz",
        mean=rng.uniform(0, 255, (size, size, 3)).astype(np.float32),
        rgb_mean=np.full(3, 120, np.float32),
        eigval=np.array([900.0, 90.0, 9.0], np.float32),
        eigvec=np.eye(3, dtype=np.float32),
    )
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """5 uneven train shards (19 samples), 3 val shards (7 samples)."""
    return write_shards(
        tmp_path_factory.mktemp("shards"), {"train": [4, 4, 4, 4, 3], "val": [3, 3, 1]}
    )


def labels_of(loader) -> list[list[int]]:
    return [batch[1].tolist() for batch in loader]


def all_labels(loader) -> list[int]:
    return [label for batch in labels_of(loader) for label in batch]


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_rank_gets_the_same_number_of_full_batches(shards, world_size, num_workers):
    want = 19 // (world_size * 2)
    for rank in range(world_size):
        loader = train_loader(
            shards,
            batch_size=2,
            epoch=0,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            crop_size=CROP,
        )
        batches = list(loader)
        assert len(loader) == len(batches) == want
        assert num_batches(shards, batch_size=2, world_size=world_size) == want
        for images, labels, windows in batches:
            assert images.dtype == torch.uint8 and images.shape == (2, CROP, CROP, 3)
            assert labels.dtype == torch.int64 and labels.shape == (2,)
            assert windows.dtype == torch.int64 and windows.shape == (2, 3)


def test_crops_come_from_their_windows_and_labels_from_their_samples(shards):
    seen = []
    for images, labels, windows in train_loader(
        shards, batch_size=3, epoch=1, num_workers=0, crop_size=CROP
    ):
        for image, label, (top, left, flip) in zip(images, labels, windows.tolist(), strict=True):
            corner = image[0, 0].int()
            assert abs(int(corner[0]) - 8 * left) <= 3 and abs(int(corner[1]) - 8 * top) <= 3
            assert abs(int(image[..., 2].float().mean()) - int(label)) <= 2
            assert 0 <= top <= S - CROP and 0 <= left <= S - CROP and flip in (0, 1)
            seen.append(int(label))
    # one worker holds every shard: each epoch is a permutation, never a repeat
    assert len(seen) == 18 and len(set(seen)) == 18


def test_fewer_shards_than_rank_worker_slots(tmp_path):
    root = write_shards(tmp_path / "one", {"train": [8]})
    seen = []
    for rank in range(2):  # 2 ranks x 2 workers share the one shard
        loader = train_loader(
            root, batch_size=2, epoch=0, rank=rank, world_size=2, num_workers=2, crop_size=CROP
        )
        got = labels_of(loader)
        assert len(got) == 2
        seen += [label for batch in got for label in batch]
    assert sorted(seen) == list(range(8))  # disjoint interleaved parts of the shard

    tiny = write_shards(tmp_path / "tiny", {"train": [2]})  # 8 slots, 2 samples
    for rank in range(4):
        loader = train_loader(
            tiny,
            batch_size=1,
            epoch=0,
            rank=rank,
            world_size=4,
            num_workers=2,
            crop_size=CROP,
            drop_last=False,
        )
        assert len(labels_of(loader)) == 1


def test_orders_depend_on_seed_and_epoch_only(shards):
    def order(epoch, seed=0, rank=0, world_size=1):
        return labels_of(
            train_loader(
                shards,
                batch_size=2,
                epoch=epoch,
                seed=seed,
                rank=rank,
                world_size=world_size,
                num_workers=0,
                crop_size=CROP,
            )
        )

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=1)
    assert order(3, rank=1, world_size=2) == order(3, rank=1, world_size=2)
    windows = [
        b[2] for b in train_loader(shards, batch_size=2, epoch=0, num_workers=0, crop_size=CROP)
    ]
    again = [
        b[2] for b in train_loader(shards, batch_size=2, epoch=0, num_workers=0, crop_size=CROP)
    ]
    assert all(torch.equal(a, b) for a, b in zip(windows, again, strict=True))


def test_loader_batches_feed_the_batch_transform(shards):
    images, labels, windows = next(
        iter(train_loader(shards, batch_size=4, epoch=0, num_workers=0, crop_size=CROP))
    )
    stats = load_stats(shards)
    out = BatchTransform.from_stats(stats, lighting_std=0.0)(images, windows)
    assert out.shape == (4, 3, CROP, CROP)
    top, left, flip = windows[0].tolist()
    crop = images[0].float() - torch.from_numpy(stats["mean"])[top : top + CROP, left : left + CROP]
    crop = crop.permute(2, 0, 1)
    assert torch.equal(out[0], crop.flip(-1) if flip else crop)


def test_too_small_a_split_and_bad_arguments(shards, tmp_path):
    with pytest.raises(DatasetError, match="fewer than one global batch"):
        train_loader(shards, batch_size=8, epoch=0, world_size=3, num_workers=0, crop_size=CROP)
    with pytest.raises(ConfigError):
        train_loader(shards, batch_size=2, epoch=0, crop_size=S + 1, num_workers=0)
    with pytest.raises(ConfigError):
        train_loader(shards, batch_size=2, epoch=0, rank=2, world_size=2, num_workers=0)
    with pytest.raises(ConfigError):
        eval_loader(shards, batch_size=2, mode="dense", num_workers=0)
    with pytest.raises(DatasetError, match="no manifest.json"):
        read_manifest(tmp_path / "missing")
    with pytest.raises(DatasetError, match="'test'"):
        eval_loader(shards, "test", batch_size=2, num_workers=0, crop_size=CROP)


def test_a_shard_emptier_than_its_manifest_fails_instead_of_hanging(tmp_path):
    root = write_shards(tmp_path / "e", {"train": [3]})
    with wds.TarWriter(str(root / "train-000000.tar")):
        pass  # truncate the shard to an empty tar; manifest.json still says 3 samples
    loader = train_loader(root, batch_size=1, epoch=0, num_workers=0, crop_size=CROP)
    with pytest.raises(DatasetError, match="holds 0 samples where manifest.json says 3"):
        list(loader)


# --------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize(
    ("world_size", "num_workers"), [(1, 0), (2, 0), (2, 2), (3, 1), (7, 0), (4, 2)]
)
def test_evaluation_reads_every_sample_exactly_once(shards, world_size, num_workers):
    keys, labels, idle = [], [], 0
    for rank in range(world_size):
        loader = eval_loader(
            shards,
            batch_size=2,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            crop_size=CROP,
            keys=True,
        )
        batches = list(loader)
        assert (
            len(batches)
            == len(loader)
            == num_batches(
                shards,
                "val",
                batch_size=2,
                world_size=world_size,
                rank=rank,
                num_workers=num_workers,
            )
        )
        idle += not batches
        for images, batch_labels, windows, batch_keys in batches:
            assert images.shape == (len(batch_keys), CROP, CROP, 3)
            assert windows.tolist() == [[4, 4, 0]] * len(batch_keys)
            keys += batch_keys
            labels += batch_labels.tolist()
    assert sorted(labels) == list(range(19, 26))  # the val samples, each once
    assert Counter(keys) == Counter(f"val_{i:05d}" for i in range(19, 26))
    assert idle == (1 if world_size == 7 else 0)  # a rank with no share just yields nothing


def test_evaluation_of_a_single_shard_over_many_ranks(tmp_path):
    root = write_shards(tmp_path / "v", {"train": [2], "val": [5]})
    labels = []
    for rank in range(3):
        loader = eval_loader(
            root, batch_size=4, rank=rank, world_size=3, num_workers=0, crop_size=CROP
        )
        labels += all_labels(loader)
    assert sorted(labels) == [2, 3, 4, 5, 6]


def test_ten_crop_and_full_modes_yield_whole_frames(shards):
    for mode in ("ten-crop", "full"):
        loader = eval_loader(shards, batch_size=3, num_workers=0, crop_size=CROP, mode=mode)
        images, labels, windows = next(iter(loader))
        assert images.shape == (3, S, S, 3) and images.dtype == torch.uint8
        assert windows.abs().sum() == 0
    ten = TenCrop(BatchTransform.from_stats(load_stats(shards)), CROP)(images, windows)
    assert ten.shape == (30, 3, CROP, CROP)


def test_file_uri_and_partial_iteration(shards):
    uri = f"file://{shards}"
    assert read_manifest(uri)["size"] == S
    assert load_stats(uri)["mean"].shape == (S, S, 3)
    loader = train_loader(uri, batch_size=2, epoch=0, num_workers=2, crop_size=CROP)
    for index, _ in enumerate(loader):  # leaving early shuts the workers down cleanly
        if index == 1:
            break
    assert len(labels_of(loader)) == 9


def test_assign_shards_wraps_and_splits():
    shards = [("a", 4), ("b", 3)]
    plan = assign_shards(shards, 5)
    assert [[(t.name, t.parts, t.part) for t in tasks] for tasks in plan] == [
        [("a", 3, 0)],
        [("b", 2, 0)],
        [("a", 3, 1)],
        [("b", 2, 1)],
        [("a", 3, 2)],
    ]
    assert sum(t.samples for tasks in plan for t in tasks) == 7
    assert [[t.name for t in tasks] for tasks in assign_shards(shards * 2, 3)] == [
        ["a", "b"],
        ["b"],
        ["a"],
    ]


def test_real_prepare_output(ray_session, tmp_path):
    """Round trip through `convplat prepare`'s actual shards and statistics."""
    make_imagenet_tree(
        tmp_path / "raw", classes=2, train_per_class=5, val_per_class=2, quirks=False
    )
    out = tmp_path / "shards"
    prepare(
        PrepareConfig(
            source=str(tmp_path / "raw"), out=str(out), size=32, shard_size=4, progress=False
        )
    )
    batches = list(train_loader(out, batch_size=2, epoch=0, num_workers=0, crop_size=CROP))
    assert len(batches) == 5
    val = all_labels(eval_loader(out, batch_size=3, num_workers=0, crop_size=CROP))
    assert sorted(val) == [0, 0, 1, 1]
    x = BatchTransform.from_stats(load_stats(out))(batches[0][0], batches[0][2])
    assert x.shape == (2, 3, CROP, CROP) and torch.isfinite(x).all()


# --------------------------------------------------------------------------- fast path
def test_a_persistent_loader_gives_each_epochs_batches_from_the_same_processes(shards):
    loader = TrainLoader(shards, batch_size=2, num_workers=2, crop_size=CROP, seed=5)
    pids = []
    for epoch in (0, 1, 2):
        got = [b[1].tolist() for b in loader.epoch(epoch)]
        fresh = train_loader(
            shards, batch_size=2, epoch=epoch, num_workers=2, crop_size=CROP, seed=5
        )
        assert got == [b[1].tolist() for b in fresh] and len(got) == len(loader) == 9
        # torch keeps a persistent DataLoader's iterator, and with it the worker processes
        pids.append([w.pid for w in loader.loader.pipeline[0]._iterator._workers])
    assert pids[0] == pids[1] == pids[2]
    later, earlier = loader.epoch(4), loader.epoch(3)  # the epoch is set when iteration starts
    assert [b[1].tolist() for b in later] == [
        b[1].tolist()
        for b in train_loader(shards, batch_size=2, epoch=4, num_workers=2, crop_size=CROP, seed=5)
    ]
    assert len(list(earlier)) == 9


def test_no_batch_is_decoded_only_to_be_dropped_at_the_end_of_an_epoch(shards, monkeypatch):
    import convplat.training.data as data

    decoded = torch.zeros((), dtype=torch.int64).share_memory_()  # counted in the workers too
    original = data._decode

    def counting(sample):
        decoded.add_(1)
        return original(sample)

    monkeypatch.setattr(data, "_decode", counting)
    for workers in (0, 2):
        decoded.zero_()
        loader = train_loader(shards, batch_size=2, epoch=0, num_workers=workers, crop_size=CROP)
        assert sum(len(b[1]) for b in loader) == 18
        assert int(decoded) == 18, workers  # before: + up to 2 prefetched batches per worker


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The keys of the raw samples read from shards (in-process loaders), in order."""
    from convplat.pipeline.shardset import ShardSet

    keys: list[str] = []
    original = ShardSet.read_samples

    def counting(self, task, *args):
        for sample in original(self, task, *args):
            keys.append(sample["__key__"])
            yield sample

    monkeypatch.setattr(ShardSet, "read_samples", counting)
    return keys


def test_the_shuffle_buffer_is_not_filled_before_the_first_batch(shards, reads):
    loader = train_loader(
        shards, batch_size=2, epoch=0, num_workers=0, crop_size=CROP, shuffle_buffer=12
    )
    next(iter(loader))  # 19 samples per pass > 12: the buffer-shuffle path
    assert len(reads) < 12  # before: the 12-sample buffer was filled first


def test_an_epoch_reads_only_the_samples_it_uses(shards, reads):
    loader = TrainLoader(shards, batch_size=2, num_workers=0, crop_size=CROP, shuffle_buffer=12)
    for epoch in range(2):
        reads.clear()
        used = [key for batch in loader.epoch(epoch) for key in batch[1].tolist()]
        # 19 samples per pass > 12: the buffer-shuffle path. Before: the 12 samples left in
        # the buffer at the epoch's end, and one more, were read for nothing.
        assert len(reads) == len(used) == 2 * len(loader), epoch


# --------------------------------------------------------------------------- pinned streams
def _stream_digest(batches) -> str:
    """sha256 of a loader's labels, windows (and keys) in delivery order."""
    rows = [[b[1].tolist(), b[2].tolist(), *b[3:]] for b in batches]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("world_size", "num_workers", "train", "val"),
    [
        (1, 0, ["b0d94fdd9668544c", "a81bfc2bfdd7b2b6"], ["d1d0dab6bd0a3563"]),
        (
            2,
            2,
            ["0a15fb208b37a8df", "27c8739fc0d3975c", "f6ea878a9db08cdc", "54d16a243f86df5d"],
            ["22aaed20fe6ae262", "ce9a173634e4a989"],
        ),
    ],
)
def test_classification_streams_are_pinned(shards, world_size, num_workers, train, val):
    """The classification batches for a seed, pinned: the digests were taken with the loader
    before localization and detection moved onto its streams (pluggable codecs), so a change
    to the shard plan, the shuffles or the crop windows fails here. Per rank: shuffle buffer
    1000 (each pass permuted) and 2 (webdataset's buffer; re-pinned when the buffer began to
    be fed only the samples an epoch uses and drained at its end)."""
    got = [
        _stream_digest(
            train_loader(
                shards,
                batch_size=2,
                epoch=3,
                seed=7,
                rank=rank,
                world_size=world_size,
                num_workers=num_workers,
                crop_size=CROP,
                shuffle_buffer=buffer,
            )
        )
        for rank in range(world_size)
        for buffer in (1000, 2)
    ]
    assert got == train
    got = [
        _stream_digest(
            eval_loader(
                shards,
                batch_size=2,
                rank=rank,
                world_size=world_size,
                num_workers=num_workers,
                crop_size=CROP,
                keys=True,
            )
        )
        for rank in range(world_size)
    ]
    assert got == val


def test_reused_buffers_never_overwrite_a_batch_still_held(shards):
    """Loader processes write a buffer again only once the main process dropped the batch in it:
    a consumer that keeps every batch sees the pixels of a loader without reused buffers, and
    one that drops them runs on the same few buffers."""
    kwargs = dict(batch_size=2, num_workers=2, crop_size=CROP, seed=3)
    reference = TrainLoader(shards, reuse_buffers=False, **kwargs)
    assert reference.slots is None
    expected = [b[0].clone() for epoch in (0, 1) for b in reference.epoch(epoch)]

    keeping = TrainLoader(shards, **kwargs)
    kept = [b[0] for epoch in (0, 1) for b in keeping.epoch(epoch)]  # held, not copied
    assert len(kept) == len(expected) == 18
    assert all(torch.equal(a, b) for a, b in zip(kept, expected, strict=True))
    usage = keeping.slots.usage()
    assert usage["slots"] <= 2 * 4 and usage["slots"] + usage["fresh"] == 18

    dropping = TrainLoader(shards, **kwargs)
    copied = [b[0].clone() for epoch in (0, 1) for b in dropping.epoch(epoch)]
    assert all(torch.equal(a, b) for a, b in zip(copied, expected, strict=True))
    usage = dropping.slots.usage()
    assert usage["slots"] > 2 * 4 and usage["slots"] + usage["fresh"] == 18
