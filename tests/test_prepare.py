"""`convplat prepare` end to end: shards, manifest, index, statistics, rejects, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import make_imagenet_tree

from convplat.config import PrepareConfig
from convplat.pipeline import prepare


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("raw")
    tree = make_imagenet_tree(root)
    out = tmp_path_factory.mktemp("shards")
    manifest = prepare(
        PrepareConfig(source=str(root), out=str(out), size=32, shard_size=4, progress=False)
    )
    return root, out, manifest, tree


def test_manifest_counts_and_classes(prepared):
    _, out, manifest, tree = prepared
    saved = json.loads((out / "manifest.json").read_text())
    assert "summary" not in saved and saved["format_version"] == 1
    assert [c["wnid"] for c in saved["classes"]] == tree["wnids"]
    valid_quirks = sum(valid for _, valid in tree["quirks"].values())
    assert saved["splits"]["train"]["count"] == 3 * 5 + valid_quirks
    assert saved["splits"]["val"]["count"] == 3 * 2
    for split in saved["splits"].values():
        assert sum(s["count"] for s in split["shards"]) == split["count"]
        for shard in split["shards"]:
            data = (out / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
            assert len(data) == shard["bytes"]
    assert not list(out.glob(".*tmp*"))


def test_rejected_records_damaged_files_and_keeps_valid_quirks(prepared):
    root, out, _, tree = prepared
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    reasons = {Path(r["path"]).name: r["reason"] for r in rejected}
    for name, (path, valid) in tree["quirks"].items():
        assert (Path(path).name in reasons) != valid, name
    assert "README.txt" in reasons
    keys = {row["key"] for row in pq.read_table(out / "index.parquet").to_pylist()}
    for path, valid in tree["quirks"].values():
        if valid:
            assert Path(path).stem in keys


def test_shards_read_back_with_plain_webdataset(prepared):
    _, out, manifest, _ = prepared
    urls = [str(out / s["name"]) for s in manifest["splits"]["train"]["shards"]]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8")
    samples = list(dataset)
    assert len(samples) == manifest["splits"]["train"]["count"]
    assert len({s["__key__"] for s in samples}) == len(samples)
    labels = {s["cls"] for s in samples}
    assert labels == {0, 1, 2}
    for sample in samples:
        assert sample["jpg"].shape == (32, 32, 3)
        meta = sample["json"]
        assert meta["label"] == sample["cls"]
        assert meta["wnid"] == manifest["classes"][sample["cls"]]["wnid"]
        for x0, y0, x1, y1 in meta["boxes"]:
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    # Shards mix classes: the seeded shuffle spreads them.
    first = [s["cls"] for s in samples[:4]]
    assert len(set(first)) > 1 or len(set(s["cls"] for s in samples[4:8])) > 1


def test_box_transform_in_shard_matches_geometry(prepared):
    _, out, _, _ = prepared
    table = pq.read_table(out / "index.parquet").to_pylist()
    row = next(r for r in table if r["width"] == 90 and r["height"] == 70 and r["boxes"])
    # 90x70 -> crop x in [10, 80), scale 32/70; VOC box (11, 6, 40, 30) 1-based -> (10, 5, 40, 30)
    scale = 32 / 70
    np.testing.assert_allclose(row["boxes"][0], [0.0, 5 * scale, 30 * scale, 30 * scale], atol=0.01)


def test_index_parquet_matches_shards(prepared):
    _, out, manifest, _ = prepared
    table = pq.read_table(out / "index.parquet")
    assert set(table.column_names) >= {
        "key",
        "split",
        "shard",
        "label",
        "wnid",
        "width",
        "height",
        "boxes",
    }
    assert table.num_rows == sum(s["count"] for s in manifest["splits"].values())
    frame = table.to_pandas()
    assert frame.groupby("split").size().to_dict() == {
        k: v["count"] for k, v in manifest["splits"].items()
    }


def test_stats_npz(prepared):
    _, out, manifest, _ = prepared
    with np.load(out / "stats.npz") as stats:
        assert stats["mean"].shape == (32, 32, 3) and stats["mean"].dtype == np.float32
        assert stats["eigvec"].shape == (3, 3) and stats["eigval"].shape == (3,)
        assert 0 < stats["mean"].mean() < 255
        assert int(stats["count"]) == manifest["splits"]["train"]["count"]


def test_ray_data_reads_the_shards(prepared, ray_session):
    import ray.data

    _, out, manifest, _ = prepared
    paths = [str(out / s["name"]) for s in manifest["splits"]["val"]["shards"]]
    rows = ray.data.read_webdataset(paths).take_all()
    assert len(rows) == manifest["splits"]["val"]["count"]
    assert {"jpg", "cls", "json"} <= set(rows[0])


def test_rerun_keeps_complete_shards_and_redoes_damaged(prepared, tmp_path):
    root, out, manifest, _ = prepared
    before = digests(out)
    names = sorted(before)
    (out / names[0]).unlink()  # a missing shard
    with open(out / names[1], "r+b") as handle:  # a corrupt one
        handle.seek(600)
        handle.write(b"garbage")
    again = prepare(
        PrepareConfig(source=str(root), out=str(out), size=32, shard_size=4, progress=False)
    )
    assert digests(out) == before
    assert again["summary"]["written"] == 2
    assert again["summary"]["kept"] == len(names) - 2


def test_cli_prepare_with_uri_output(prepared, tmp_path):
    from convplat.cli.main import main

    root, out, _, _ = prepared
    target = tmp_path / "uri-out"
    assert (
        main(
            ["prepare", str(root), "--out", f"file://{target}", "--size", "32", "--shard-size", "4"]
        )
        == 0
    )
    assert digests(target) == digests(out)
