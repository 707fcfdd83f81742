"""convplat's shard tar bytes equal webdataset's TarWriter output, fast path and fallback."""

from __future__ import annotations

import io
import tarfile

import webdataset as wds

from convplat.pipeline.tar import ShardTar


def _samples() -> list[tuple[str, dict[str, bytes]]]:
    samples = [
        (f"n01440764_{i}", {"jpg": bytes(range(256)) * (i + 1), "cls": b"7", "json": b"{}"})
        for i in range(5)
    ]
    samples.append(("x" * 120, {"jpg": b"long name: PAX record", "cls": b"1"}))
    samples.append(("caf\u00e9_1", {"jpg": b"non-ASCII name: PAX record", "cls": b""}))
    samples.append(("exact_512", {"jpg": b"\xff" * 512, "cls": b"2"}))  # no padding needed
    return samples


def test_shard_tar_bytes_equal_webdataset_tarwriter():
    reference = io.BytesIO()
    with wds.TarWriter(reference, user="convplat", group="convplat", mtime=0, encoder=False) as w:
        for key, members in _samples():
            w.write({"__key__": key, **members})
    tar = ShardTar()
    for key, members in _samples():
        tar.write(key, members)
    assert tar.getvalue() == reference.getvalue()


def test_shard_tar_reads_back_with_tarfile():
    tar = ShardTar()
    for key, members in _samples():
        tar.write(key, members)
    payload = tar.getvalue()
    assert len(payload) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
        names = archive.getnames()
        assert archive.extractfile("n01440764_3.jpg").read() == bytes(range(256)) * 4
        assert archive.getmember("n01440764_0.cls").uname == "convplat"
    expected = [f"{k}.{ext}" for k, members in _samples() for ext in sorted(members)]
    assert names == expected


def test_empty_shard_is_a_valid_empty_tar():
    payload = ShardTar().getvalue()
    assert payload == b"\0" * tarfile.RECORDSIZE
    with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
        assert archive.getnames() == []
