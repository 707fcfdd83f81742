"""Location: URIs keep their scheme through child(), directories are seen as directories."""

from __future__ import annotations

import pyarrow.fs as pafs

from convplat.storage import Location, resolve


def test_child_keeps_the_uri_scheme(tmp_path):
    root = resolve(f"file://{tmp_path}")
    child = root.child("runs", "a")
    assert child.uri == f"file://{tmp_path}/runs/a"
    child.write_bytes("x.txt", b"hi")
    assert (tmp_path / "runs" / "a" / "x.txt").read_bytes() == b"hi"
    assert resolve(child.uri).read_bytes("x.txt") == b"hi"


def test_child_on_a_subtree_filesystem(tmp_path):
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    root = Location(fs, "base", "mem://base")
    child = root.child("out")
    child.write_bytes("f.bin", b"1")
    assert child.uri == "mem://base/out"
    assert (tmp_path / "base" / "out" / "f.bin").read_bytes() == b"1"
    assert root.is_dir("out") and not root.exists("out") and child.exists("f.bin")


def test_local_child_is_a_plain_path(tmp_path):
    child = resolve(tmp_path).child("a/", "b")
    assert child.uri == str(tmp_path / "a" / "b") == child.path
