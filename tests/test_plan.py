"""The streamed listing and plan (issue 15 §2): the same items, shards and bytes as the
in-memory definitions, with the listing spilled to sorted runs and the plan kept on disk."""

from __future__ import annotations

import functools
import hashlib
import importlib
import random
import tempfile
from pathlib import Path

import pytest
from conftest import jpeg_bytes, make_imagenet_tree

from convplat.config import PrepareConfig
from convplat.pipeline import prepare
from convplat.pipeline.plan import ShardPlan
from convplat.pipeline.readers import Item, read_dataset, stream_dataset
from convplat.pipeline.readers import items as items_module
from convplat.pipeline.readers.records import RecordSink
from convplat.pipeline.shards import ShardOptions, plan_digest, plan_fingerprint, plan_shards

prepare_module = importlib.import_module("convplat.pipeline.prepare")


def test_record_sink_merges_spilled_runs_into_sorted_order(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rng = random.Random(0)
    records = [
        (rng.choice(["train", "val"]), f"/d/{rng.random()}", rng.randrange(5), "g", f"s{i}")
        for i in range(50)
    ]
    sink = RecordSink(run_size=7)
    for record in records:
        sink.append(record)
    assert len(sink._runs) == 7  # 49 records spilled, one left in memory
    assert list(tmp_path.iterdir()) == []  # unlinked when made: a killed run leaves nothing
    files = [run.file for run in sink._runs]
    assert list(sink.sorted()) == sorted(records)
    assert list(sink.sorted()) == sorted(records)  # any number of passes
    assert sorted(sink.unordered()) == sorted(records)
    assert sink.counts == {s: sum(r[0] == s for r in records) for s in ("train", "val")}
    sink.close()
    assert all(f.closed for f in files)


def _clash_tree(root: Path) -> Path:
    """Names that need every key shape: repeated stems, ``1.jpg`` beside ``1.png`` (numbered
    keys), and class folders ``a`` and ``a-c`` (whose paths sort apart from the folder order)."""
    for folder, names in {
        "a": ["1.jpg", "1.png", "2.jpg"],
        "a-c": ["1.jpg"],
        "b": ["1.jpg"],
    }.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes(jpeg_bytes(24, 20, seed=len(name)))
    return root


def _caltech_tree(root: Path) -> Path:
    """Caltech-101 repeats image_0001 in every class: keys are ``<class>_<stem>``."""
    for cls in ("ant", "bee", "cat"):
        folder = root / "101_ObjectCategories" / cls
        folder.mkdir(parents=True)
        for i in range(1, 5):
            (folder / f"image_{i:04d}.jpg").write_bytes(jpeg_bytes(24, 20, seed=i))
    return root


@pytest.mark.parametrize("tree", ["imagenet", "caltech", "clash"])
def test_streamed_items_equal_read_dataset(tmp_path, tree):
    if tree == "imagenet":
        make_imagenet_tree(tmp_path, classes=3, train_per_class=4, val_per_class=2)
    else:
        {"caltech": _caltech_tree, "clash": _clash_tree}[tree](tmp_path)
    listing = read_dataset(tmp_path)
    with stream_dataset(tmp_path, run_size=3) as stream:
        assert stream.records._runs  # really spilled
        streamed = list(stream.items())
        assert stream.split_counts() == listing.split_counts()
    assert streamed == listing.items
    assert len({item.key for item in streamed}) == len(streamed)
    if tree == "imagenet":
        assert any(item.boxes for item in streamed)


def test_key_shapes_survive_hash_collisions(tmp_path, monkeypatch):
    """Equal hashes are only a hint: the strings behind them are compared."""
    _caltech_tree(tmp_path)
    expected = read_dataset(tmp_path).items
    monkeypatch.setattr(items_module, "hash", lambda text: len(text) % 3, raising=False)
    with stream_dataset(tmp_path, run_size=5) as stream:
        assert list(stream.items()) == expected


def _items(splits: dict[str, int]) -> list[Item]:
    box = (1.0, 2.0, 9.5, 8.0)
    rows = [
        Item(f"/data/{split}/c{i % 3}/f{i:04d}.jpg", split, i % 3, f"{split}_{i}", (box,) * (i % 2))
        for split, count in splits.items()
        for i in range(count)
    ]
    return sorted(rows, key=lambda item: (item.split, item.path))


@pytest.mark.parametrize("shard_size", [1, 4, 7, 100])
def test_plan_on_disk_equals_plan_shards(shard_size):
    items = _items({"test": 5, "train": 23, "val": 9})
    options = ShardOptions(size=32, source_root="/data", wnids=("a", "b", "c"))
    specs = plan_shards(items, shard_size, seed=11)
    digests = {spec.name: plan_digest(spec, options) for spec in specs}
    with ShardPlan.build(iter(items), shard_size, 11, options) as plan:
        assert [(s.name, s.split, s.count) for s in plan.shards] == [
            (spec.name, spec.split, len(spec.items)) for spec in specs
        ]
        assert [plan.spec(shard) for shard in plan.shards] == specs
        assert plan.digests == digests
        assert plan.fingerprint() == plan_fingerprint(specs, digests)
        assert plan.split_counts() == {"test": 5, "train": 23, "val": 9}
    assert plan._specs.closed


def test_plan_refuses_items_out_of_split_order():
    items = _items({"train": 3, "val": 2})
    with pytest.raises(ValueError, match="sorted by split"):
        ShardPlan.build(reversed(items), 2, 0, ShardOptions())


def _digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def test_prepare_with_spilled_listing_writes_the_same_bytes(tmp_path, monkeypatch):
    make_imagenet_tree(tmp_path / "raw", classes=3, train_per_class=5, val_per_class=2)
    config = dict(source=str(tmp_path / "raw"), size=16, shard_size=4, seed=3, progress=False)
    prepare(PrepareConfig(out=str(tmp_path / "memory"), **config), executor="local")
    spilled = functools.partial(prepare_module.stream_dataset, run_size=2)
    monkeypatch.setattr(prepare_module, "stream_dataset", spilled)
    prepare(PrepareConfig(out=str(tmp_path / "spilled"), **config), executor="local")
    reference = _digests(tmp_path / "memory")
    assert any(name.endswith(".tar") for name in reference)
    assert _digests(tmp_path / "spilled") == reference


def test_prepare_reads_each_spec_when_its_task_is_handed_out(tmp_path, monkeypatch):
    """The tasks' specs come from the plan file one at a time, as the executor takes them."""
    make_imagenet_tree(tmp_path / "raw", classes=2, train_per_class=6, val_per_class=2)
    reads, taken = [], []
    real_spec, real_run = ShardPlan.spec, prepare_module.run_local

    def spec(self, shard):
        reads.append(shard.name)
        return real_spec(self, shard)

    def run_local(todo, out, options, workers):
        for key, shard_spec in todo:
            taken.append(key.name)
            assert reads == taken  # nothing read ahead of the executor
            yield from real_run([(key, shard_spec)], out, options, workers)

    monkeypatch.setattr(ShardPlan, "spec", spec)
    monkeypatch.setattr(prepare_module, "run_local", run_local)
    config = PrepareConfig(
        source=str(tmp_path / "raw"), out=str(tmp_path / "o"), size=16, shard_size=3,
        progress=False,
    )  # fmt: skip
    summary = prepare(config, executor="local")["summary"]
    assert summary["written"] == len(taken) == summary["shards"] > 1
