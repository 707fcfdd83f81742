"""index.parquet streamed shard by shard is byte-identical to writing the whole table at once
(with the writer's row group size)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from convplat.pipeline import index as index_module
from convplat.pipeline.index import INDEX_SCHEMA, IndexWriter
from convplat.storage import resolve


def rows(shard: str, n: int) -> list[dict]:
    return [
        {
            "key": f"{shard}-{i}",
            "split": "train",
            "shard": shard,
            "label": i % 3,
            "wnid": f"n{i % 3:08d}",
            "width": 100 + i,
            "height": 80,
            "boxes": [[1.0, 2.0, 3.0, 4.0]] * (i % 2),
            "source": f"train/{shard}/{i}.jpg",
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("row_group", [None, 4])
def test_streamed_in_any_order_equals_one_write(tmp_path, monkeypatch, row_group):
    if row_group:
        monkeypatch.setattr(index_module, "ROW_GROUP", row_group)
    shards = {"a": rows("a", 5), "b": rows("b", 3), "c": rows("c", 0), "d": rows("d", 6)}
    writer = IndexWriter(resolve(tmp_path), list(shards))
    for name in ("d", "b", "a", "c"):  # tasks finish in any order
        writer.add(name, shards[name])
    assert not (tmp_path / "index.parquet").exists()  # appears only when complete
    writer.commit()
    everything = [row for name in shards for row in shards[name]]
    sink = pa.BufferOutputStream()
    pq.write_table(
        pa.Table.from_pylist(everything, schema=INDEX_SCHEMA),
        sink,
        row_group_size=index_module.ROW_GROUP,
    )
    assert (tmp_path / "index.parquet").read_bytes() == sink.getvalue().to_pybytes()
    assert pq.read_table(tmp_path / "index.parquet").to_pylist() == everything
    assert [p.name for p in tmp_path.iterdir()] == ["index.parquet"]


def test_abort_leaves_the_old_index(tmp_path):
    (tmp_path / "index.parquet").write_bytes(b"old")
    writer = IndexWriter(resolve(tmp_path), ["a", "b"])
    writer.add("a", rows("a", 2))
    with pytest.raises(RuntimeError, match="never added"):
        writer.commit()
    writer.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["index.parquet"]
    assert (tmp_path / "index.parquet").read_bytes() == b"old"
