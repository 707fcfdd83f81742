"""The shard set's read side: damaged shards, manifests and statistics give one DatasetError
line naming the file (picklable, from loader processes too), and `verify` re-hashes shards."""

from __future__ import annotations

import hashlib
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import typer
import webdataset as wds
from typer.testing import CliRunner

from convplat.cli.verify import verify_command
from convplat.errors import DatasetError
from convplat.pipeline.shardset import ShardSet, ShardTask, load_stats, read_manifest, verify
from convplat.training.data import eval_loader, train_loader

S = 16


def make_shards(root: Path, counts: dict[str, list[int]], sizes: bool = True) -> Path:
    """A shard set as `convplat prepare` writes it: manifest with bytes and sha256."""
    root.mkdir(parents=True, exist_ok=True)
    splits, label = {}, 0
    image = simplejpeg.encode_jpeg(np.full((S, S, 3), 90, np.uint8), quality=95)
    for split, shard_counts in counts.items():
        shards = []
        for index, count in enumerate(shard_counts):
            name = f"{split}-{index:06d}.tar"
            with wds.TarWriter(str(root / name)) as sink:
                for _ in range(count):
                    sink.write({"__key__": f"{label:05d}", "jpg": image, "cls": b"0"})
                    label += 1
            data = (root / name).read_bytes()
            entry = {"name": name, "count": count}
            if sizes:
                entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            shards.append(entry)
        splits[split] = {"count": sum(shard_counts), "shards": shards}
    (root / "manifest.json").write_text(json.dumps({"size": S, "classes": [], "splits": splits}))
    np.savez(root / "stats.npz", mean=np.zeros((S, S, 3), np.float32))
    return root


def member_end(path: Path, members: int) -> int:
    """The byte offset just after the first ``members`` tar members (a member boundary)."""
    with tarfile.open(path) as tar:
        info = tar.getmembers()[members - 1]
    return info.offset_data + -(-info.size // 512) * 512


def cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def eval_all(root: Path, **kw) -> int:
    loader = eval_loader(root, "val", batch_size=8, crop_size=S, num_workers=0, **kw)
    return sum(len(batch[1]) for batch in loader)


# --------------------------------------------------------------------------- cheap checks
@pytest.mark.parametrize("sizes", [True, False])
def test_a_val_shard_cut_at_a_member_boundary_fails_evaluation(tmp_path, sizes):
    # Before: the loader yielded the 3 samples left and evaluation reported on them, exit 0.
    root = make_shards(tmp_path, {"val": [6]}, sizes=sizes)
    shard = root / "val-000000.tar"
    cut(shard, member_end(shard, 6))  # 3 whole samples (jpg + cls) left
    assert len(list(wds.WebDataset(str(shard), shardshuffle=False))) == 3
    expected = "bytes where manifest.json says" if sizes else "holds 3 samples where"
    with pytest.raises(DatasetError, match=expected) as caught:
        eval_all(root)
    assert "val-000000.tar" in str(caught.value) and "\n" not in str(caught.value)


def test_the_intact_set_reads_whole(tmp_path):
    root = make_shards(tmp_path, {"train": [5, 3], "val": [6]})
    shard_set = ShardSet.open(root)
    assert shard_set.count("train") == 8 and shard_set.shards("val") == [("val-000000.tar", 6)]
    assert shard_set.size == S and shard_set.splits == ["train", "val"]
    assert eval_all(root) == 6
    assert pickle.loads(pickle.dumps(shard_set)).manifest == shard_set.manifest


def test_a_truncated_shard_is_one_picklable_line_naming_it(tmp_path):
    # Before: tarfile.ReadError carrying the open stream, which no process boundary can pickle
    # ("TypeError: no default __reduce__" from Ray Train).
    root = make_shards(tmp_path, {"train": [4]}, sizes=False)
    shard = root / "train-000000.tar"
    cut(shard, member_end(shard, 3) + 700)  # inside the second sample's jpg
    with pytest.raises(DatasetError, match="train-000000.tar is unreadable") as caught:
        list(ShardSet.open(root).read_samples(ShardTask("train-000000.tar", 4)))
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is DatasetError and str(copy) == str(caught.value)


def test_a_loader_process_reports_the_shard_in_one_line(tmp_path):
    root = make_shards(tmp_path, {"train": [4]}, sizes=False)
    shard = root / "train-000000.tar"
    cut(shard, member_end(shard, 3) + 700)
    loader = train_loader(root, batch_size=2, epoch=0, num_workers=1, crop_size=S)
    with pytest.raises(DatasetError) as caught:
        list(loader)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("shard ") and "train-000000.tar" in message


def test_a_missing_shard_names_it(tmp_path):
    root = make_shards(tmp_path, {"val": [2, 2]})
    (root / "val-000001.tar").unlink()
    with pytest.raises(DatasetError, match=r"val-000001.tar is missing"):
        eval_all(root)


@pytest.mark.parametrize(
    "manifest",
    [
        [],
        {"size": 16, "splits": []},
        {"size": "16", "splits": {}},
        {"size": 16, "splits": {"val": {"count": 2, "shards": "val-000000.tar"}}},
        {"size": 16, "splits": {"val": {"count": 2, "shards": [{"name": "v.tar"}]}}},
        {"size": 16, "splits": {"val": {"count": 2, "shards": [{"name": 3, "count": 2}]}}},
    ],
)
def test_a_manifest_of_the_wrong_structure_is_one_line(tmp_path, manifest):
    root = make_shards(tmp_path, {"val": [2]})
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"manifest.json: expected"):
        read_manifest(root)
    with pytest.raises(DatasetError, match=r"manifest.json: expected"):
        eval_all(root)


def test_a_truncated_stats_file_is_one_line(tmp_path):
    root = make_shards(tmp_path, {"val": [2]})
    cut(root / "stats.npz", 100)
    with pytest.raises(DatasetError, match=r"unreadable .*stats.npz"):
        load_stats(root)


def test_a_file_given_for_the_shard_directory_is_one_line(tmp_path):
    # `--data some.tar`: pyarrow raises NotADirectoryError, not FileNotFoundError.
    shard_file = tmp_path / "train-000000.tar"
    shard_file.write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"no manifest.json in .*train-000000.tar"):
        read_manifest(shard_file)
    with pytest.raises(DatasetError, match=r"no stats.npz in .*train-000000.tar"):
        load_stats(shard_file)


# --------------------------------------------------------------------------- full check
def test_verify_rehashes_every_shard(tmp_path):
    root = make_shards(tmp_path, {"train": [3, 3], "val": [2]})
    report = verify(root, progress=False)
    assert report.ok and report.shards == 3
    data = bytearray((root / "train-000001.tar").read_bytes())
    data[-1100] ^= 0xFF  # same size, other bytes: only the hash can tell
    (root / "train-000001.tar").write_bytes(bytes(data))
    (root / "val-000000.tar").unlink()
    report = verify(root, progress=False)
    assert not report.ok
    assert [p.rsplit("/", 1)[1] for p in report.problems] == [
        "train-000001.tar: sha256 differs from manifest.json",
        "val-000000.tar: missing",
    ]


def test_verify_command_says_one_line(tmp_path):
    app = typer.Typer()
    app.command()(verify_command)
    app.command("other")(lambda: None)  # so `verify` stays a subcommand
    root = make_shards(tmp_path, {"train": [3]})
    result = CliRunner().invoke(app, ["verify-command", str(root), "--no-progress"])
    assert result.exit_code == 0 and "1 shards" in result.output
    cut(root / "train-000000.tar", 1024)
    result = CliRunner().invoke(app, ["verify-command", str(root), "--no-progress"])
    assert isinstance(result.exception, DatasetError)
    assert "train-000000.tar: 1024 bytes, manifest.json says" in str(result.exception)
