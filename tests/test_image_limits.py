"""Hostile inputs: decompression bombs are refused from the header, huge files before reading,
and a JPEG whose data is mostly missing is rejected rather than padded with grey."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from conftest import jpeg_bytes
from PIL import Image

from convplat.errors import ImageDecodeError
from convplat.pipeline.image import MAX_PIXELS, decode_rgb, process_image
from convplat.pipeline.readers import Item
from convplat.pipeline.shards import ShardOptions, ShardSpec, plan_digest, write_shard


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid RGB PNG whose pixels are all 0: tiny on disk, width*height*3 bytes decoded."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A complete 64x48 JPEG (with its EOI) whose frame header claims ``width x height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_png_bomb_is_refused_from_its_header():
    bomb = png_of_zeros(12000, 12000)  # ~420 KB on disk, 432 MB of pixels
    assert len(bomb) < 500_000 and 12000 * 12000 > MAX_PIXELS
    with pytest.raises(ImageDecodeError, match="image too large.*max_pixels"):
        decode_rgb(bomb, 256)


def test_a_small_file_claiming_a_huge_jpeg_is_refused():
    data = jpeg_claiming(13000, 13000)
    assert len(data) < 1000
    with pytest.raises(ImageDecodeError, match="image too large"):
        decode_rgb(data, 256)


def test_a_jpeg_whose_data_is_mostly_missing_is_rejected_not_grey():
    # 5000x5000 is under the pixel limit: libjpeg would pad the missing data with grey.
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_rgb(jpeg_claiming(5000, 5000), 256)


def test_harmless_libjpeg_warnings_still_decode():
    data = jpeg_bytes(120, 90)
    # "extraneous bytes before marker 0xd9", as in a few real ImageNet files.
    rgb, width, height = decode_rgb(data[:-2] + b"\0" * 16 + b"\xff\xd9", 256)
    assert (width, height) == (120, 90) and rgb.shape == (90, 120, 3)


def test_max_pixels_applies_to_every_format():
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"):
        data = jpeg_bytes(100, 60, fmt=fmt)
        assert process_image(data, 32, max_pixels=6000).jpeg  # exactly at the limit: kept
        with pytest.raises(ImageDecodeError, match="image too large"):
            process_image(data, 32, max_pixels=5999)


def test_shard_task_records_bombs_and_huge_files(tmp_path):
    files = {
        "bomb.png": png_of_zeros(12000, 12000),
        "big.jpg": b"\xff\xd8" + bytes(1_000_000),  # never read: refused by its size
        "fine.jpg": jpeg_bytes(60, 40, seed=2),
    }
    items = []
    for i, (name, data) in enumerate(files.items()):
        (tmp_path / name).write_bytes(data)
        items.append(Item(str(tmp_path / name), "val", 0, f"k{i}"))
    spec = ShardSpec("val", 0, tuple(items))
    options = ShardOptions(size=16, source_root=str(tmp_path), max_bytes=600_000)
    info, _ = write_shard(spec, str(tmp_path / "out"), options)
    assert info.count == 1
    reasons = {r["path"]: r["reason"] for r in info.rejected}
    assert reasons["bomb.png"].startswith("image too large")  # small file, huge header
    assert reasons["big.jpg"].startswith("file too large")
    saved = json.loads((tmp_path / "out" / "_parts" / "val-000000.tar.json").read_text())
    assert saved["rejected"] == info.rejected


def test_limits_enter_the_plan_digest_only_when_not_default():
    spec = ShardSpec("val", 0, (Item("/a.jpg", "val", 0, "a"),))
    assert plan_digest(spec, ShardOptions()) == plan_digest(
        spec, ShardOptions(max_pixels=MAX_PIXELS)
    )
    assert plan_digest(spec, ShardOptions()) != plan_digest(spec, ShardOptions(max_pixels=10))


def test_huge_png_under_the_limit_is_box_reduced_first():
    # 17.2M pixels (> REDUCE_ABOVE_PIXELS): decoded at 1/8, as a JPEG would be by DCT scaling.
    rgb, width, height = decode_rgb(png_of_zeros(4200, 4100), 256)
    assert (width, height) == (4200, 4100) and rgb.shape == (513, 525, 3)
    small, _, _ = decode_rgb(png_of_zeros(1200, 900), 256)  # ordinary sizes: exact path
    assert small.shape == (900, 1200, 3)
