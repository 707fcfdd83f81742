"""prepare's --out is a transaction it owns: manifest invalidated first and written last, stale
shards removed, a lock, foreign directories refused, one line for every write failure."""

from __future__ import annotations

import errno
import importlib
import json
import os
import pickle
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_imagenet_tree

from convplat.config import PrepareConfig
from convplat.errors import ConvplatError
from convplat.pipeline import prepare
from convplat.pipeline.outdir import LOCK, OutputError
from convplat.pipeline.readers import read_dataset
from convplat.pipeline.shards import ShardOptions, plan_shards, write_shard
from convplat.storage import Location

# The module (the package's ``prepare`` attribute is the function).
prepare_module = importlib.import_module("convplat.pipeline.prepare")


def config(root, out, **kw) -> PrepareConfig:
    kw = {"size": 16, "shard_size": 4, "progress": False, **kw}
    return PrepareConfig(source=str(root), out=str(out), **kw)


def tars(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.tar")}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    make_imagenet_tree(root, classes=2, train_per_class=4, val_per_class=1, quirks=False)
    return root


def test_other_plan_invalidates_manifest_before_any_shard(raw, tmp_path, ray_session, monkeypatch):
    out = tmp_path / "out"
    prepare(config(raw, out))
    assert (out / "manifest.json").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the run dies while its shards are being written

    monkeypatch.setattr(prepare_module, "_run_tasks", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare(config(raw, out, seed=1))
    # No manifest that describes other shards than those on disk; the lock is released.
    assert not (out / "manifest.json").exists() and not (out / LOCK).exists()


def test_other_plan_removes_stale_shards_only(raw, tmp_path, ray_session):
    out = tmp_path / "out"
    prepare(config(raw, out, shard_size=2))
    assert "train-000003.tar" in tars(out)
    (out / "notes.txt").write_text("mine")
    (out / "val-000007.tar").write_bytes(b"a shard convplat did not write (no sidecar)")
    (out / "_parts" / "mine.json").write_text("{}")
    (out / "sub").mkdir()
    (out / "sub" / ".data.tmp-0123456789abcdef0123456789abcdef").write_text("mine too")
    own_tmp = out / ".train-000000.tar.tmp-0123456789abcdef0123456789abcdef"
    own_tmp.write_text("left by a killed writer")
    manifest = prepare(config(raw, out, shard_size=8))
    listed = {s["name"] for split in manifest["splits"].values() for s in split["shards"]}
    assert tars(out) - {"val-000007.tar"} == listed == {"train-000000.tar", "val-000000.tar"}
    assert (out / "val-000007.tar").is_file()
    parts = {p.name for p in (out / "_parts").iterdir()}
    assert parts == {f"{n}.{ext}" for n in listed for ext in ("json", "npz")} | {"mine.json"}
    assert (out / "notes.txt").is_file() and (out / "sub").is_dir() and not own_tmp.exists()
    assert len(list((out / "sub").iterdir())) == 1
    assert json.loads((out / "manifest.json").read_text())["plan"] == manifest["plan"]


def test_refuses_a_foreign_directory_unless_overwrite(raw, tmp_path, ray_session):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="not write.*--overwrite"):
        prepare(config(raw, out))
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]
    prepare(config(raw, out), overwrite=True)
    assert (out / "holiday.jpg").read_bytes() == b"precious" and (out / "manifest.json").is_file()
    prepare(config(raw, out))  # now it is a convplat output: no --overwrite needed


def test_never_overwrites_a_foreign_manifest(raw, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "someone else\'s"}')
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="manifest.json that convplat did not write"):
            prepare(config(raw, out), overwrite=overwrite)
    assert (out / "manifest.json").read_text() == '{"name": "someone else\'s"}'


def test_out_naming_a_file_is_one_line(raw, tmp_path):
    from convplat.cli.main import main

    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        prepare(config(raw, target))
    assert main(["prepare", str(raw), "--out", str(target)]) == 2
    assert target.read_text() == "x"


def test_a_live_lock_is_refused_and_a_dead_ones_taken_over(raw, tmp_path, ray_session):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".convplat-shards").write_text("{}")
    host = socket.gethostname()
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": host}))
    with pytest.raises(OutputError, match="another prepare"):
        prepare(config(raw, out))
    assert not (out / "manifest.json").exists() and (out / LOCK).exists()
    (out / LOCK).write_text(json.dumps({"pid": 2**22 + 7, "host": host}))  # no such process
    prepare(config(raw, out))
    assert (out / "manifest.json").is_file() and not (out / LOCK).exists()


def test_disk_full_is_one_line_on_the_driver_and_in_a_task(raw, tmp_path, ray_session, monkeypatch):
    out = tmp_path / "out"
    prepare(config(raw, out))
    write_bytes = Location.write_bytes

    def full(self, name, data):
        if name.endswith((".npz", ".tar")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, name, data)

    monkeypatch.setattr(Location, "write_bytes", full)
    with pytest.raises(OutputError, match="No space left on device") as caught:
        prepare(config(raw, out))  # every shard is kept: only the driver writes
    assert "\n" not in str(caught.value)
    listing = read_dataset(raw)
    spec = plan_shards(listing.items, 4, 0)[0]
    with pytest.raises(OutputError, match="No space left on device") as caught:
        write_shard(spec, str(tmp_path / "task"), ShardOptions(size=16))
    assert isinstance(pickle.loads(pickle.dumps(caught.value)), ConvplatError)


def test_names_that_are_not_utf8_are_kept_with_a_display_form(tmp_path, ray_session):
    from conftest import jpeg_bytes

    root = tmp_path / "raw"
    for cls in (b"caf\xe9", b"tea"):  # a Latin-1 folder name beside a plain one
        folder = root / "train" / os.fsdecode(cls)
        folder.mkdir(parents=True)
        for i in range(3):
            name = os.fsdecode(b"img\xff%d.jpg" % i) if cls == b"tea" else f"{i}.jpg"
            (folder / name).write_bytes(jpeg_bytes(40, 30, seed=i))
        (folder / os.fsdecode(b"bad\xfe.jpg")).write_bytes(b"")
    out = tmp_path / "out"
    manifest = prepare(config(root, out, layout="folder"))
    assert manifest["splits"]["train"]["count"] == 6
    sources = set(pq.read_table(out / "index.parquet").column("source").to_pylist())
    assert "train/tea/img\\xff0.jpg" in sources
    assert "caf\\xe9" in {c["wnid"] for c in manifest["classes"]}
    rejected = (out / "rejected.jsonl").read_text()
    assert "bad\\\\xfe.jpg" in rejected


def test_shards_a_cluster_wrote_elsewhere_are_one_line(tmp_path):
    """With --address and a local --out, shards written on other nodes' disks are missing
    here: prepare says so instead of writing a manifest over nothing."""
    from types import SimpleNamespace

    from convplat.storage import resolve

    _check_visible = prepare_module._check_visible

    (tmp_path / "train-000000.tar").write_bytes(b"x")
    todo = [SimpleNamespace(name="train-000000.tar"), SimpleNamespace(name="train-000001.tar")]
    with pytest.raises(OutputError, match="1 shard.*train-000001.tar.*shares"):
        _check_visible(resolve(tmp_path), todo)
    _check_visible(resolve(tmp_path), todo[:1])


def test_tasks_get_the_resolved_out(tmp_path, monkeypatch):
    """A relative --out reaches the tasks as an absolute path (each node's own working
    directory would otherwise decide where its shards go)."""
    module = prepare_module
    seen = []
    real = module.run_local

    def spy(todo, out, options, workers):
        seen.append(out)
        return real(todo, out, options, workers)

    monkeypatch.setattr(module, "run_local", spy)
    monkeypatch.chdir(tmp_path)
    make_imagenet_tree(tmp_path / "raw", classes=2, train_per_class=3, val_per_class=1)
    module.prepare(PrepareConfig(source="raw", out="rel", size=16, shard_size=4, progress=False))
    assert seen == [str(tmp_path / "rel")]
