"""Pure per-image work for `prepare`: decode any real-archive file to RGB, rescale, crop, encode.

No Ray here: `prepare.py` fans these functions out. The fast path is libjpeg-turbo (simplejpeg)
for decode and encode with DCT-domain 1/2, 1/4, 1/8 reduction, and torch's antialiased uint8
bilinear resize; anything simplejpeg refuses (CMYK, PNG behind a .JPEG name, GIF, ...) falls back
to Pillow, which converts it to RGB. See benchmarks/prepare.py for the measured choice.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from convplat.config.prepare import MAX_BYTES, MAX_PIXELS  # noqa: F401 - image limits live here
from convplat.errors import ImageDecodeError

JPEG_MAGIC = b"\xff\xd8"
# Decompression bombs: a file whose header claims more pixels than this is rejected before any
# decoding (every format: simplejpeg's header, or Pillow's, which reads only the header on open).
# Pillow's own default warning limit (~9459 x 9459): several times the area of the largest
# ImageNet, Caltech or VOC image, and at most ~1.3 GB of decode buffers in a worker (README).
# Files larger than this are rejected before they are read (the largest ImageNet JPEGs are a few
# MB; a q90 JPEG of MAX_PIXELS is ~25-40 MB).
# Both limits are PrepareConfig's defaults (--max-pixels, --max-bytes).
# Non-JPEG images above this many pixels are box-reduced right after decoding (see _reduce);
# smaller ones take the exact path, so ordinary PNGs give the same bytes as before.
REDUCE_ABOVE_PIXELS = 1 << 24


@dataclass(frozen=True)
class Geometry:
    """How a decoded image maps onto the output: crop window in decoded pixels, then a scale.

    Source coordinate x (original file pixels) maps to output pixel
    ``(x * decoded_w / src_w - left) * scale``; the same with y.
    """

    src_w: int
    src_h: int
    decoded_w: int
    decoded_h: int
    left: int
    top: int
    crop_w: int
    crop_h: int
    out_w: int
    out_h: int

    @property
    def scale(self) -> float:
        return self.out_w / self.crop_w


def plan_geometry(
    src_w: int, src_h: int, decoded_w: int, decoded_h: int, size: int, crop: bool = True
) -> Geometry:
    """Shorter side -> ``size``, then (``crop``) the central ``size x size`` square.

    The crop is taken first, in decoded pixels, so only the pixels we keep are resampled
    (AlexNet §2: "rescaled the image such that the shorter side was of length 256, and then
    cropped out the central 256x256 patch").
    """
    short = min(decoded_w, decoded_h)
    if crop:
        left, top = (decoded_w - short) // 2, (decoded_h - short) // 2
        return Geometry(src_w, src_h, decoded_w, decoded_h, left, top, short, short, size, size)
    out_w = max(1, round(decoded_w * size / short))
    out_h = max(1, round(decoded_h * size / short))
    return Geometry(src_w, src_h, decoded_w, decoded_h, 0, 0, decoded_w, decoded_h, out_w, out_h)


def transform_boxes(boxes, geom: Geometry) -> list[list[float]]:
    """Map (xmin, ymin, xmax, ymax) boxes from source pixels into output pixels, clipped.

    Boxes that end up with no area inside the output are dropped; the caller keeps labels
    aligned by using :func:`transform_boxes_with_index`.
    """
    return [box for _, box in transform_boxes_with_index(boxes, geom)]


def transform_boxes_with_index(boxes, geom: Geometry) -> list[tuple[int, list[float]]]:
    """Like :func:`transform_boxes` but also returns each kept box's index in ``boxes``."""
    sx = geom.decoded_w / geom.src_w * geom.out_w / geom.crop_w
    sy = geom.decoded_h / geom.src_h * geom.out_h / geom.crop_h
    ox, oy = geom.left * geom.out_w / geom.crop_w, geom.top * geom.out_h / geom.crop_h
    kept = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        nx0 = min(max(x0 * sx - ox, 0.0), geom.out_w)
        ny0 = min(max(y0 * sy - oy, 0.0), geom.out_h)
        nx1 = min(max(x1 * sx - ox, 0.0), geom.out_w)
        ny1 = min(max(y1 * sy - oy, 0.0), geom.out_h)
        if nx1 > nx0 and ny1 > ny0:
            kept.append((i, [round(v, 2) for v in (nx0, ny0, nx1, ny1)]))
    return kept


def reduction_factor(width: int, height: int, size: int) -> int:
    """Largest DCT reduction (1, 2, 4, 8) that keeps the shorter side >= ``size``.

    Only power-of-two factors: libjpeg-turbo's 3/4, 3/8 ... scalings are slower than a full
    decode and lose 9-13 dB (measured, shared/FIELD-NOTES.md).
    """
    short = min(width, height)
    factor = 1
    while factor < 8 and short >= size * factor * 2:
        factor *= 2
    return factor


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large ({width}x{height} = {width * height:,} pixels > max_pixels "
            f"{max_pixels:,})"
        )


def decode_rgb(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int, int]:
    """Decode any image file to an (H, W, 3) uint8 RGB array, DCT-reduced where exact enough.

    Returns the array and the file's original width and height. Raises ImageDecodeError with
    a short reason for empty, truncated, non-image or oversized files; the size comes from the
    header and is checked against ``max_pixels`` before anything is decoded.
    """
    if not data:
        raise ImageDecodeError("empty file")
    if data[:2] == JPEG_MAGIC:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            pass  # not a header simplejpeg reads: Pillow decides below
        else:
            _check_pixels(width, height, max_pixels)
            factor = reduction_factor(width, height, size)
            try:
                rgb = simplejpeg.decode_jpeg(
                    data,
                    colorspace="RGB",
                    min_height=math.ceil(height / factor),
                    min_width=math.ceil(width / factor),
                )
                return rgb, width, height
            except ValueError as exc:
                # libjpeg's "premature end" (file cut short, or its data missing before an
                # EOI): Pillow would pad the missing part with grey, so it is rejected here.
                # Other complaints (CMYK, arithmetic coding, extraneous bytes) go to Pillow.
                if "premature end" in str(exc).lower():
                    raise ImageDecodeError(f"truncated JPEG ({exc})") from None
    return _decode_with_pillow(data, size, max_pixels)


def _decode_with_pillow(data: bytes, size: int, max_pixels: int) -> tuple[np.ndarray, int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height = im.size
                _check_pixels(width, height, max_pixels)
                if im.format == "JPEG":
                    factor = reduction_factor(width, height, size)
                    if factor > 1:
                        im.draft(im.mode, (math.ceil(width / factor), math.ceil(height / factor)))
                im.load()
                if im.format != "JPEG" and width * height > REDUCE_ABOVE_PIXELS:
                    im = _reduce(im, reduction_factor(width, height, size))
                rgb = _to_rgb(im)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unidentified format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"undecodable: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageDecodeError("image has no pixels")
    return rgb, width, height


def _reduce(im: Image.Image, factor: int) -> Image.Image:
    """Box-reduce a huge decoded image by ``factor`` before any full-size copy is made.

    What DCT scaling does for JPEGs, for the other formats: without it, converting a
    ~9,000 x 9,000 PNG took a worker ~1-2 GB above its baseline (RGBA compositing, 16-bit
    scaling to float64); measured in the README's limits section.
    """
    if factor <= 1:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L"):
        im = im.convert("I")
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    try:
        return im.reduce(factor)
    except ValueError:  # a mode reduce() does not support: keep the full-size image
        return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Convert any Pillow mode to RGB; transparent pixels are composited on grey."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (128, 128, 128, 255))
        im = Image.alpha_composite(background, im)
    elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 / max(arr.max(), 1.0)
        return np.repeat((arr * scale).round().astype(np.uint8)[..., None], 3, axis=2)
    if im.mode == "RGB":  # convert() would copy the whole image once more
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def resize_crop(rgb: np.ndarray, geom: Geometry) -> np.ndarray:
    """Crop then resize with antialiased bilinear (the torchvision/Pillow triangle filter).

    torch's uint8 antialiased kernel is ~2x faster than Pillow's on this machine.
    """
    window = rgb[geom.top : geom.top + geom.crop_h, geom.left : geom.left + geom.crop_w]
    if window.shape[0] == geom.out_h and window.shape[1] == geom.out_w:
        return np.ascontiguousarray(window)
    with warnings.catch_warnings():
        # Pillow's arrays are read-only; torch warns for any such array, but only reads this one.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        tensor = torch.from_numpy(np.ascontiguousarray(window)).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(
        tensor, size=(geom.out_h, geom.out_w), mode="bilinear", antialias=True, align_corners=False
    )  # (1, 3, H, W) uint8, planar even for a channels-last input
    # Interleaving the three planes with np.stack is ~3x cheaper than torch's permuted copy.
    return np.stack(out[0].numpy(), axis=-1)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """Encode (H, W, 3) uint8 RGB as baseline JPEG (4:2:0, like ImageNet's own files)."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(rgb), quality=quality, colorspace="RGB", colorsubsampling="420"
    )


@dataclass(frozen=True)
class ProcessedImage:
    """One prepared sample: encoded bytes, the pixels (for statistics) and the geometry."""

    jpeg: bytes
    pixels: np.ndarray
    geometry: Geometry


def process_image(
    data: bytes, size: int = 256, quality: int = 90, crop: bool = True, max_pixels: int = MAX_PIXELS
) -> ProcessedImage:
    """Decode, rescale the shorter side to ``size``, centre-crop (unless ``crop=False``), encode.

    Files whose header claims more than ``max_pixels`` pixels are rejected before decoding.
    """
    rgb, width, height = decode_rgb(data, size, max_pixels)
    geom = plan_geometry(width, height, rgb.shape[1], rgb.shape[0], size, crop=crop)
    pixels = resize_crop(rgb, geom)
    return ProcessedImage(encode_jpeg(pixels, quality), pixels, geom)
