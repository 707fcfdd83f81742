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


def test_remove_temporaries_only_its_own_names_and_levels(tmp_path):
    hexname = "0123456789abcdef0123456789abcdef"
    ours = [tmp_path / f".a.tar.tmp-{hexname}", tmp_path / "_parts" / f".a.json.tmp-{hexname}"]
    theirs = [
        tmp_path / ".notes.tmp-draft",  # looks alike, not write_bytes' shape
        tmp_path / "deep" / f".x.tmp-{hexname}",  # below the levels asked for
        tmp_path / f"a.tmp-{hexname}",
    ]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert resolve(tmp_path).remove_temporaries("_parts") == 2
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)


def test_create_exclusive_and_delete(tmp_path):
    loc = resolve(tmp_path)
    assert loc.create_exclusive("lock", b"1") and not loc.create_exclusive("lock", b"2")
    assert loc.read_bytes("lock") == b"1" and loc.names() == ["lock"]
    assert loc.delete("lock") and not loc.delete("lock") and loc.names() == []


def test_write_bytes_on_a_full_disk_leaves_no_temporary(tmp_path):
    """A write that fails half-way (ENOSPC) removes its temporary file: on a full disk it
    would otherwise keep holding the space the rerun needs."""
    import errno

    import pytest

    class FullStream:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

        def write(self, data):
            self.stream.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

    class FullDisk(pafs.LocalFileSystem):
        def open_output_stream(self, path, *args, **kwargs):
            return FullStream(super().open_output_stream(path, *args, **kwargs))

    location = Location(FullDisk(), str(tmp_path), str(tmp_path))
    with pytest.raises(OSError, match="No space left"):
        location.write_bytes("shard.tar", b"x" * 100)
    assert list(tmp_path.iterdir()) == []
