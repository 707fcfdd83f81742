"""Decode, geometry, resize and box arithmetic of the per-image prepare path."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg
from conftest import jpeg_bytes, photo

from convplat.errors import ImageDecodeError
from convplat.pipeline.image import (
    decode_rgb,
    plan_geometry,
    process_image,
    reduction_factor,
    resize_crop,
    transform_boxes,
    transform_boxes_with_index,
)


def test_geometry_landscape_centre_crop():
    geom = plan_geometry(500, 375, 500, 375, 256)
    assert (geom.left, geom.top, geom.crop_w, geom.crop_h) == (62, 0, 375, 375)
    assert (geom.out_w, geom.out_h) == (256, 256)


def test_geometry_portrait_and_no_crop():
    geom = plan_geometry(300, 451, 300, 451, 256)
    assert (geom.left, geom.top, geom.crop_w) == (0, 75, 300)
    whole = plan_geometry(500, 375, 500, 375, 256, crop=False)
    assert (whole.out_w, whole.out_h) == (341, 256)  # 500 * 256 / 375 = 341.33


def test_boxes_map_into_crop_pixels_and_clip():
    geom = plan_geometry(500, 375, 500, 375, 250)  # scale 250/375 = 2/3, left 62
    boxes = [(62.0, 0.0, 437.0, 375.0), (0.0, 30.0, 92.0, 60.0), (0.0, 0.0, 50.0, 50.0)]
    kept = transform_boxes_with_index(boxes, geom)
    assert [i for i, _ in kept] == [0, 1]  # the third box lies left of the crop: dropped
    np.testing.assert_allclose(kept[0][1], [0.0, 0.0, 250.0, 250.0])
    np.testing.assert_allclose(kept[1][1], [0.0, 20.0, 20.0, 40.0])


def test_boxes_follow_dct_reduction():
    # A 1000x750 file decoded at 1/2 (500x375): boxes are in original pixels.
    geom = plan_geometry(1000, 750, 500, 375, 250)
    np.testing.assert_allclose(
        transform_boxes([(124.0, 0.0, 874.0, 750.0)], geom), [[0.0, 0.0, 250.0, 250.0]]
    )


@pytest.mark.parametrize(
    ("w", "h", "factor"),
    [(500, 375, 1), (1000, 750, 2), (600, 511, 1), (600, 512, 2), (2200, 2100, 8), (1100, 1030, 4)],
)
def test_reduction_factor_keeps_short_side(w, h, factor):
    assert reduction_factor(w, h, 256) == factor
    assert -(-min(w, h) // factor) >= 256


def test_resize_crop_identity_and_constant():
    pixels = photo(256, 300)
    geom = plan_geometry(256, 300, 256, 300, 256)
    np.testing.assert_array_equal(resize_crop(pixels, geom), pixels[22:278])
    flat = np.full((375, 500, 3), 77, np.uint8)
    out = resize_crop(flat, plan_geometry(500, 375, 500, 375, 256))
    assert out.shape == (256, 256, 3) and (out == 77).all()


def test_decode_reduces_large_jpegs_in_dct():
    rgb, width, height = decode_rgb(jpeg_bytes(1100, 800), 256)
    assert (width, height) == (1100, 800)
    assert rgb.shape == (400, 550, 3)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_become_rgb(mode):
    rgb, _, _ = decode_rgb(jpeg_bytes(300, 260, mode=mode), 256)
    assert rgb.shape == (260, 300, 3) and rgb.dtype == np.uint8
    reference = photo(300, 260)
    if mode == "L":
        assert (rgb[..., 0] == rgb[..., 1]).all()
    else:  # CMYK round trip keeps the colours close
        assert np.abs(rgb.astype(int) - reference).mean() < 8


def test_png_behind_jpeg_name():
    rgb, width, height = decode_rgb(jpeg_bytes(320, 280, fmt="PNG"), 256)
    np.testing.assert_array_equal(rgb, photo(320, 280))
    assert (width, height) == (320, 280)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image"),
        (jpeg_bytes(300, 300)[:800], "truncated"),
    ],
)
def test_damaged_files_raise_with_reason(data, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_rgb(data, 256)
    assert reason in info.value.reason


def test_decompression_bomb_is_rejected_not_loaded():
    # A PNG header that claims 30000x30000 pixels: refused before any pixel is decoded.
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_rgb(png, 256)


def test_process_image_is_close_to_naive_pillow_path():
    from io import BytesIO

    from PIL import Image

    data = jpeg_bytes(500, 375, seed=3)
    sample = process_image(data, 256, 95)
    naive = Image.open(BytesIO(data)).convert("RGB").resize((341, 256), Image.LANCZOS)
    naive = np.asarray(naive.crop((42, 0, 298, 256)), dtype=np.float64)
    decoded = simplejpeg.decode_jpeg(sample.jpeg).astype(np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((decoded - naive) ** 2))
    assert sample.pixels.shape == (256, 256, 3)
    assert psnr > 35
