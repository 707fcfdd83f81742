"""Synthetic ImageNet-like, Caltech-101-like and PASCAL-VOC-2012-like datasets for
``convplat demo-data``.

Each image shows procedurally drawn objects (one shape x colour per class) on a cluttered
background, with tight boxes, written in the real archives' layouts (PAPERS.md §4). Output is a
pure function of the arguments: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from convplat.errors import ConfigError
from convplat.pipeline.readers import VOC_CLASSES

LAYOUTS = ("folder", "ilsvrc")
JPEG_QUALITY = 90
MAX_OBJECTS_PER_IMAGE = 10
MARKER = ".convplat-demo.json"  # marks a directory this module may delete and rewrite

# --- shapes -------------------------------------------------------------------------------------
# A shape is (outer polygons, hole polygons) in unit coordinates: every vertex lies inside the
# unit disc, so any rotation of a shape of diameter d fits in a d x d square (no clipping).

Polygon = list[tuple[float, float]]


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48, start: float = 0.0):
    t = start + np.arange(n) * (2 * math.pi / n)
    return list(zip((cx + r * np.cos(t)).tolist(), (cy + r * np.sin(t)).tolist(), strict=True))


def _regular(n: int, r: float = 1.0) -> Polygon:
    return _circle(r, n=n, start=-math.pi / 2)


def _star(points: int = 5, inner: float = 0.45) -> Polygon:
    t = -math.pi / 2 + np.arange(2 * points) * (math.pi / points)
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return list(zip((r * np.cos(t)).tolist(), (r * np.sin(t)).tolist(), strict=True))


def _heart() -> Polygon:
    t = np.linspace(0, 2 * math.pi, 60, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return list(zip((x / 17).tolist(), ((y + 2.5) / 17).tolist(), strict=True))


def _semicircle() -> Polygon:
    t = np.linspace(math.pi, 2 * math.pi, 33)
    return list(zip(np.cos(t).tolist(), (np.sin(t) + 0.4).tolist(), strict=True))


def _poly(points: str) -> Polygon:
    """``"x,y x,y ..."`` -> vertex list (keeps the shape table one line per shape)."""
    return [(float(x), float(y)) for x, y in (p.split(",") for p in points.split())]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


_SQUARE = _rect(-0.7, -0.7, 0.7, 0.7)
SHAPES: dict[str, tuple[list[Polygon], list[Polygon]]] = {
    # ImageNet-like classes
    "disc": ([_circle()], []),
    "triangle": ([_regular(3)], []),
    "square": ([_SQUARE], []),
    "star": ([_star()], []),
    "cross": ([_rect(-.3, -.95, .3, .95), _rect(-.95, -.3, .95, .3)], []),
    "ring": ([_circle()], [_circle(0.55)]),
    "diamond": ([_poly("0,-1 .6,0 0,1 -.6,0")], []),
    "hexagon": ([_regular(6)], []),
    "crescent": ([_circle()], [_circle(0.85, 0.45, -0.15)]),
    "arrow": ([_poly("-1,-.25 .2,-.25 .2,-.65 1,0 .2,.65 .2,.25 -1,.25")], []),
    "heart": ([_heart()], []),
    "frame": ([_SQUARE], [_rect(-.4, -.4, .4, .4)]),
    # Caltech-like classes (none of the above)
    "pentagon": ([_regular(5)], []),
    "hourglass": ([_poly("-.6,-.8 .6,-.8 .1,0 .6,.8 -.6,.8 -.1,0")], []),
    "tee": ([_poly("-.8,-.7 .8,-.7 .8,-.35 .2,-.35 .2,.75 -.2,.75 -.2,-.35 -.8,-.35")], []),
    "ell": ([_poly("-.55,-.8 -.15,-.8 -.15,.4 .6,.4 .6,.8 -.55,.8")], []),
    "chevron": ([_poly("-.8,-.6 -.35,-.6 .15,0 -.35,.6 -.8,.6 -.3,0"),
                 _poly("0,-.6 .45,-.6 .95,0 .45,.6 0,.6 .5,0")], []),
    "ellipse": ([[(x, 0.42 * y) for x, y in _circle()]], []),
    "trapezoid": ([_poly("-.45,-.5 .45,-.5 .9,.4 -.9,.4")], []),
    "semicircle": ([_semicircle()], []),
}  # fmt: skip


def _fit_unit_disc(outer: list[Polygon], holes: list[Polygon]) -> tuple[list, list]:
    r = max(math.hypot(x, y) for poly in outer for x, y in poly)

    def scale(polys: list[Polygon]) -> list[Polygon]:
        return [[(x / r, y / r) for x, y in p] for p in polys]

    return scale(outer), scale(holes)


SHAPES = {name: _fit_unit_disc(*parts) for name, parts in SHAPES.items()}
IMAGENET_SHAPES = ("disc", "triangle", "square", "star", "cross", "ring", "diamond", "hexagon",
                   "crescent", "arrow", "heart", "frame")  # fmt: skip
CALTECH_SHAPES = ("pentagon", "hourglass", "tee", "ell", "chevron", "ellipse", "trapezoid",
                  "semicircle")  # fmt: skip

IMAGENET_COLOURS = {
    "red": (220, 30, 30), "blue": (35, 70, 225), "green": (30, 165, 50),
    "yellow": (240, 220, 30), "magenta": (215, 40, 205), "cyan": (40, 215, 225),
    "orange": (250, 135, 20), "purple": (115, 40, 170), "white": (248, 248, 248),
    "black": (18, 18, 18),
}  # fmt: skip
CALTECH_COLOURS = {
    "teal": (0, 128, 128), "pink": (255, 150, 190), "brown": (135, 75, 25),
    "olive": (125, 125, 0), "navy": (10, 10, 105), "lime": (170, 255, 60),
    "silver": (175, 175, 190), "gold": (215, 175, 50),
}  # fmt: skip

MAX_CLASSES = len(IMAGENET_SHAPES) * len(IMAGENET_COLOURS)
MAX_CALTECH_CLASSES = len(CALTECH_SHAPES) * len(CALTECH_COLOURS)


@dataclass(frozen=True)
class ClassSpec:
    """One synthetic class: ``wnid`` is the folder name (a fake WordNet id for ImageNet)."""

    index: int
    wnid: str
    name: str
    shape: str
    colour: tuple[int, int, int]
    striped: bool = False


@dataclass(frozen=True)
class Box:
    """An object box in ImageNet's convention: 1-based pixel coordinates, both ends inclusive."""

    label: int
    xmin: int
    ymin: int
    xmax: int
    ymax: int


def _pairs(n: int, n_shapes: int, n_colours: int) -> list[tuple[int, int]]:
    # Class k gets shape k % S and colour (k % S + k // S) % C: the first min(S, C) classes differ
    # in both shape and colour, and the map is one-to-one for k < S * C.
    return [(k % n_shapes, (k % n_shapes + k // n_shapes) % n_colours) for k in range(n)]


def imagenet_class_specs(n: int) -> list[ClassSpec]:
    """The first ``n`` ImageNet-like classes; sorted wnid order = class order."""
    names = list(IMAGENET_COLOURS)
    out = []
    for k, (s, c) in enumerate(_pairs(n, len(IMAGENET_SHAPES), len(names))):
        wnid = f"n0{1_440_764 + 61_007 * k:07d}"  # fake but well-formed: 'n' + 8 digits
        shape = IMAGENET_SHAPES[s]
        out.append(ClassSpec(k, wnid, f"{names[c]} {shape}", shape, IMAGENET_COLOURS[names[c]]))
    return out


def caltech_class_specs(n: int) -> list[ClassSpec]:
    """The first ``n`` Caltech-like classes (striped, other shapes and colours than ImageNet's)."""
    names = list(CALTECH_COLOURS)
    out = []
    for k, (s, c) in enumerate(_pairs(n, len(CALTECH_SHAPES), len(names))):
        folder = f"{names[c]}_{CALTECH_SHAPES[s]}"
        out.append(
            ClassSpec(
                k,
                folder,
                folder.replace("_", " "),
                CALTECH_SHAPES[s],
                CALTECH_COLOURS[names[c]],
                striped=True,
            )
        )
    return out


# The 20 VOC class names (readers.VOC_CLASSES), each drawn as one of the 20 shapes above in a
# colour of its own: the demo VOC shares shapes with both other sets, as real VOC shares
# object kinds with ImageNet.
VOC_SHAPES = IMAGENET_SHAPES + CALTECH_SHAPES
VOC_COLOURS = {**IMAGENET_COLOURS, **CALTECH_COLOURS}
MAX_VOC_CLASSES = len(VOC_CLASSES)


def voc_class_specs(n: int = MAX_VOC_CLASSES) -> list[ClassSpec]:
    """The first ``n`` VOC classes (devkit order), named as the devkit names them."""
    colours = list(VOC_COLOURS)
    out = []
    for k, name in enumerate(VOC_CLASSES[:n]):
        colour = colours[(7 * k + 3) % len(colours)]
        out.append(ClassSpec(k, name, f"{name} ({colour} {VOC_SHAPES[k]})", VOC_SHAPES[k],
                             VOC_COLOURS[colour], striped=k % 3 == 2))  # fmt: skip
    return out


# --- drawing ------------------------------------------------------------------------------------


def _far_colours(rng: np.random.Generator, n: int, avoid: Sequence, muted: bool) -> np.ndarray:
    """``n`` random RGB colours at least ~90 (Euclidean) from every colour in ``avoid``."""
    cols = rng.integers(0, 256, size=(n, 3)).astype(np.float32)
    if muted:  # backgrounds: pull toward grey so saturated objects stand out
        cols = 0.55 * cols + 0.45 * 128
    if len(avoid):
        ref = np.asarray(avoid, np.float32)
        for _ in range(8):
            near = (np.linalg.norm(cols[:, None] - ref[None], axis=2) < 90).any(axis=1)
            if not near.any():
                break
            fresh = rng.integers(0, 256, size=(int(near.sum()), 3)).astype(np.float32)
            cols[near] = 0.55 * fresh + 0.45 * 128 if muted else fresh
    return cols


def draw_background(
    rng: np.random.Generator, width: int, height: int, avoid: Sequence = (), clutter: bool = True
) -> Image.Image:
    """A cluttered RGB background: smooth colour blotches, fine noise and small distractors.

    Colours are drawn at random, away from the ``avoid`` colours (the objects'), so the
    background never tells the class. ``clutter=False`` gives a plain mid-grey image.
    """
    if not clutter:
        return Image.new("RGB", (width, height), (128, 128, 128))
    gh, gw = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    grid = _far_colours(rng, gh * gw, avoid, muted=True).reshape(gh, gw, 3).astype(np.uint8)
    img = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    # Luminance grain of +-10. Muted colours lie in 57..198, so uint8 arithmetic cannot wrap.
    noise = rng.integers(0, 21, size=(height, width, 1), dtype=np.uint8)
    img = Image.fromarray(np.asarray(img) - np.uint8(10) + noise, "RGB")
    # Distractors: small ellipses, rectangles and lines, 2-9% of the shorter side.
    draw = ImageDraw.Draw(img)
    short = min(width, height)
    n = int(rng.integers(6, 16))
    cols = _far_colours(rng, n, avoid, muted=False).astype(int)
    kinds = rng.integers(0, 3, n)
    sizes = rng.uniform(0.02, 0.09, (n, 2)) * short
    xs, ys = rng.uniform(0, width, n), rng.uniform(0, height, n)
    for k, (w, h), x, y, c in zip(kinds, sizes, xs, ys, cols, strict=True):
        xy = [x, y, x + w, y + h]
        fill = tuple(c.tolist())
        if k == 0:
            draw.ellipse(xy, fill=fill)
        elif k == 1:
            draw.rectangle(xy, fill=fill)
        else:
            draw.line(xy, fill=fill, width=max(1, int(h / 5)))
    return img


def _object_mask(
    shape: str,
    size: tuple[int, int],
    cx: float,
    cy: float,
    radius: float,
    angle: float,
    stretch: float,
) -> Image.Image:
    outer, holes = SHAPES[shape]
    cos, sin = math.cos(angle), math.sin(angle)

    def place(poly: Polygon) -> list[tuple[float, float]]:
        # Squash one axis only, so the shape stays inside its disc of the given radius.
        p = np.asarray(poly, np.float64) * (radius * min(1, stretch), radius * min(1, 1 / stretch))
        rot = p @ np.array([[cos, sin], [-sin, cos]])
        return [(float(x), float(y)) for x, y in rot + (cx, cy)]

    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for poly in outer:
        draw.polygon(place(poly), fill=255)
    for poly in holes:
        draw.polygon(place(poly), fill=0)
    return mask


def _paint(canvas: np.ndarray, mask: np.ndarray, x0: int, y0: int, spec: ClassSpec,
           rng: np.random.Generator) -> None:  # fmt: skip
    """Fill ``mask`` (placed at x0, y0) with the class colour, jittered, shaded, maybe striped."""
    h, w = mask.shape
    colour = np.clip(np.asarray(spec.colour, np.float32) + rng.uniform(-25, 25, 3), 0, 255)
    xs = np.arange(w, dtype=np.float32) - w / 2
    ys = np.arange(h, dtype=np.float32)[:, None] - h / 2
    theta = rng.uniform(0, 2 * math.pi)
    # A soft linear light across the object: brightness x0.83..x1.17.
    shade = 1 + 0.12 * (xs * math.cos(theta) + ys * math.sin(theta)) / (max(w, h) / 2)
    if spec.striped:
        half = rng.uniform(3, 7)  # half the stripe period, px
        phi = rng.uniform(0, 2 * math.pi)
        shade = shade * (1 - 0.45 * ((xs * math.cos(phi) + ys * math.sin(phi)) // half % 2))
    fill = np.minimum(colour * shade[..., None], 255).astype(np.uint8)  # (h, w, 3)
    region = canvas[y0 : y0 + h, x0 : x0 + w]
    region[mask] = fill[mask]


def _overlaps(b: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    return any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in others)


def draw_sample(
    rng: np.random.Generator,
    classes: Sequence[ClassSpec],
    class_index: int,
    width: int,
    height: int,
    *,
    objects: int = 1,
    scale: tuple[float, float] = (0.3, 0.7),
    clutter: bool = True,
) -> tuple[Image.Image, list[Box]]:
    """Draw one RGB image whose first (largest) object is of class ``class_index``.

    Args:
        objects: draw 1..objects objects (a random count); extra objects are of random classes,
            smaller than the first and placed so that no two boxes overlap (one that finds no
            free spot after a few tries is left out).
        scale: range of the first object's diameter as a fraction of the shorter side.
        clutter: False paints the objects on a plain grey background (for tests).

    Returns:
        The image and one box per drawn object, the first one of ``class_index``.
    """
    short = min(width, height)
    count = 1 if objects <= 1 else int(rng.integers(1, objects + 1))
    labels = [class_index] + [int(c) for c in rng.integers(0, len(classes), count - 1)]
    lo, hi = scale
    if count > 1:  # leave room for the others
        hi = min(hi, max(lo, 0.5))
    diam = [rng.uniform(lo, hi) * short]
    diam += [d * short for d in rng.uniform(0.15, 0.3, count - 1) if d * short < diam[0]]
    specs = [classes[i] for i in labels]
    img = draw_background(rng, width, height, avoid=[s.colour for s in specs], clutter=clutter)
    canvas = np.array(img)
    boxes: list[Box] = []
    taken: list[tuple[int, int, int, int]] = []
    for spec, d in zip(specs, diam, strict=False):
        r = d / 2
        for _ in range(20):
            cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            mask_img = _object_mask(
                spec.shape,
                (width, height),
                cx,
                cy,
                r,
                rng.uniform(0, 2 * math.pi),
                rng.uniform(0.85, 1.15),
            )
            bbox = mask_img.getbbox()
            if bbox is not None and not _overlaps(bbox, taken):
                break
        else:
            continue
        taken.append(bbox)
        _paint(canvas, np.asarray(mask_img.crop(bbox)) > 0, bbox[0], bbox[1], spec, rng)
        x0, y0, x1, y1 = bbox  # PIL: half-open, 0-based -> ImageNet: inclusive, 1-based
        boxes.append(Box(spec.index, x0 + 1, y0 + 1, x1, y1))
    return Image.fromarray(canvas, "RGB"), boxes


# --- writing ------------------------------------------------------------------------------------


def voc_xml(
    folder: str,
    stem: str,
    size: tuple[int, int],
    boxes: Sequence[Box],
    classes: Sequence[ClassSpec],
    *,
    filename: str | None = None,
    database: str = "ILSVRC_2012",
    difficult: Sequence[bool] = (),
) -> bytes:
    """A PASCAL-VOC annotation as ImageNet ships it (``filename`` is the stem, no extension);
    VOC 2012 itself names the file (``filename="<id>.jpg"``) and flags ``difficult`` objects."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = stem if filename is None else filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = database
    sz = ET.SubElement(root, "size")
    for tag, v in (("width", size[0]), ("height", size[1]), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for i, b in enumerate(boxes):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[b.label].wnid
        hard = "1" if i < len(difficult) and difficult[i] else "0"
        for tag, v in (("pose", "Unspecified"), ("truncated", "0"), ("difficult", hard)):
            ET.SubElement(obj, tag).text = v
        bb = ET.SubElement(obj, "bndbox")
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(bb, tag).text = str(getattr(b, tag))
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="utf-8") + b"\n"


def prediction_string(boxes: Sequence[Box], classes: Sequence[ClassSpec]) -> str:
    """Kaggle LOC ``PredictionString``: ``wnid xmin ymin xmax ymax `` repeated."""
    return "".join(f"{classes[b.label].wnid} {b.xmin} {b.ymin} {b.xmax} {b.ymax} " for b in boxes)


def _save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=JPEG_QUALITY)


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="\n")
    else:
        path.write_bytes(data)


def _fresh_dir(path: Path, params: dict) -> None:
    """Empty ``path`` for writing; refuse to delete anything demo-data did not write itself."""
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"expected a directory at {path}, got a file; choose another --out")
        if (path / MARKER).is_file():
            shutil.rmtree(path)
        elif any(path.iterdir()):
            raise ConfigError(
                f"expected {path} to be missing or empty, got a directory that demo-data did "
                "not write; choose another --out"
            )
    path.mkdir(parents=True, exist_ok=True)
    _write(path / MARKER, json.dumps(params, indent=1, sort_keys=True) + "\n")


def _image_rng(seed: int, *key: int) -> np.random.Generator:
    # One independent stream per image: a file's bytes depend only on (seed, key), not on the
    # order of generation.
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{name}: expected an integer {rng}, got {value}")
    return int(value)


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator:
    if not enabled:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("demo-data"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("images", total=total)
        yield lambda n=1: bar.advance(task, n)


def _imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
    # Sides 300-500 px, aspect up to 5:3 either way (portrait and landscape).
    return int(rng.integers(300, 501)), int(rng.integers(300, 501))


def _caltech_size(rng: np.random.Generator) -> tuple[int, int]:
    # "roughly 300 x 200 pixels" (PAPERS.md §4.2), mostly landscape, some portrait.
    w, h = int(rng.integers(250, 351)), int(rng.integers(180, 251))
    return (h, w) if rng.random() < 0.2 else (w, h)


def make_demo_data(
    out: str | Path = "data",
    classes: int = 10,
    seed: int = 0,
    layout: str = "folder",
    train_per_class: int = 100,
    val_per_class: int = 20,
    caltech_classes: int = 6,
    caltech_per_class: int = 35,
    objects_per_image: int = 1,
    voc: bool = True,
    voc_classes: int = MAX_VOC_CLASSES,
    voc_train: int = 200,
    voc_val: int = 200,
    progress: bool = False,
) -> dict:
    """Write a synthetic ``out/imagenet``, ``out/caltech101`` and (``voc``)
    ``out/VOCdevkit/VOC2012``; return a short summary.

    Args:
        layout: ``folder`` (ImageFolder ``train/<wnid>``, ``val/<wnid>``, VOC XML under
            ``Annotations/``) or ``ilsvrc`` (Kaggle ``ILSVRC/Data/CLS-LOC`` with
            ``LOC_*`` files and XML under ``ILSVRC/Annotations/CLS-LOC``).
        caltech_per_class: mean images per Caltech class; counts are spread unevenly over
            about +-30% of it, as in the real set.
        objects_per_image: up to this many objects per ImageNet image, each with a box; the
            image label is the first (largest) one's class.
        voc, voc_classes, voc_train, voc_val: a VOC 2012 tree with the first ``voc_classes``
            of the 20 VOC classes present (the per-class files list all 20), 1-3 objects per
            image, some flagged difficult, and ``voc_train``/``voc_val`` images.

    Returns:
        ``{"out", "seconds", "imagenet": {...}, "caltech101": {...}, "voc2012": {...}}`` with
        paths and counts (``voc2012`` only with ``voc``).

    Raises:
        ConfigError: an argument is out of range, or an output directory holds data that
            demo-data did not write (it never deletes such data).
    """
    classes = _check_int("classes", classes, 2, MAX_CLASSES)
    seed = _check_int("seed", seed, 0)
    train_per_class = _check_int("train_per_class", train_per_class, 1)
    val_per_class = _check_int("val_per_class", val_per_class, 1)
    caltech_classes = _check_int("caltech_classes", caltech_classes, 2, MAX_CALTECH_CLASSES)
    caltech_per_class = _check_int("caltech_per_class", caltech_per_class, 1)
    objects_per_image = _check_int("objects_per_image", objects_per_image, 1, MAX_OBJECTS_PER_IMAGE)
    voc_classes = _check_int("voc_classes", voc_classes, 2, MAX_VOC_CLASSES)
    voc_train = _check_int("voc_train", voc_train, 1)
    voc_val = _check_int("voc_val", voc_val, 1)
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")

    start = time.perf_counter()
    out = Path(out)
    params = dict(
        classes=classes,
        seed=seed,
        layout=layout,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        caltech_classes=caltech_classes,
        caltech_per_class=caltech_per_class,
        objects_per_image=objects_per_image,
        voc=bool(voc),
        voc_classes=voc_classes,
        voc_train=voc_train,
        voc_val=voc_val,
    )
    plan = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    specs = imagenet_class_specs(classes)
    cal_specs = caltech_class_specs(caltech_classes)

    # Caltech counts: evenly spaced offsets in +-30%, shuffled, so classes are always uneven.
    spread = max(1, round(0.3 * caltech_per_class))
    offsets = np.rint(np.linspace(-spread, spread, caltech_classes)).astype(int)
    cal_counts = np.maximum(1, caltech_per_class + plan.permutation(offsets)).tolist()
    n_background = max(2, caltech_per_class // 2)
    total = classes * (train_per_class + val_per_class) + sum(cal_counts) + n_background
    total += (voc_train + voc_val) if voc else 0

    imagenet, caltech, devkit = out / "imagenet", out / "caltech101", out / "VOCdevkit"
    _fresh_dir(imagenet, params)
    _fresh_dir(caltech, params)
    if voc:
        _fresh_dir(devkit, params)
    with _progress(progress, total) as advance:
        inet = _write_imagenet(
            imagenet,
            specs,
            seed,
            layout,
            train_per_class,
            val_per_class,
            objects_per_image,
            plan,
            advance,
        )
        cal = _write_caltech(caltech, cal_specs, seed, cal_counts, n_background, plan, advance)
        voc_summary = None
        if voc:
            voc_specs = voc_class_specs(voc_classes)
            voc_summary = _write_voc(
                devkit / "VOC2012", voc_specs, seed, voc_train, voc_val, advance
            )
    summary = {
        "out": str(out),
        "seconds": 0.0,
        "imagenet": inet,
        "caltech101": cal,
    }
    if voc_summary is not None:
        summary["voc2012"] = voc_summary
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def _write_imagenet(
    root: Path,
    specs: list[ClassSpec],
    seed: int,
    layout: str,
    train_per_class: int,
    val_per_class: int,
    objects: int,
    plan: np.random.Generator,
    advance,
) -> dict:
    ilsvrc = layout == "ilsvrc"
    data = root / "ILSVRC" / "Data" / "CLS-LOC" if ilsvrc else root
    ann = root / "ILSVRC" / "Annotations" / "CLS-LOC" if ilsvrc else root / "Annotations"
    solutions: dict[str, list[str]] = {"train": [], "val": []}
    imagesets: dict[str, list[str]] = {"train_cls": [], "val": []}
    n_boxes = 0

    def emit(split: str, spec: ClassSpec, stem: str, key: tuple[int, ...]) -> None:
        nonlocal n_boxes
        rng = _image_rng(seed, *key)
        w, h = _imagenet_size(rng)
        img, boxes = draw_sample(rng, specs, spec.index, w, h, objects=objects)
        sub = Path(split, spec.wnid) if split == "train" or not ilsvrc else Path(split)
        folder = spec.wnid if split == "train" else "val"
        _save_jpeg(img, data / sub / f"{stem}.JPEG")
        _write(ann / sub / f"{stem}.xml", voc_xml(folder, stem, (w, h), boxes, specs))
        solutions[split].append(f"{stem},{prediction_string(boxes, specs)}")
        n_boxes += len(boxes)
        advance()

    for spec in specs:
        # Real train ids are "<wnid>_<N>" with N neither fixed-width nor consecutive.
        ids = np.sort(plan.choice(np.arange(1, 20 * train_per_class + 1), train_per_class, False))
        for j, n in enumerate(ids.tolist()):
            stem = f"{spec.wnid}_{n}"
            emit("train", spec, stem, (1, spec.index, j))
            imagesets["train_cls"].append(f"{spec.wnid}/{stem}")
    # Val images are numbered 1.. over all classes in a shuffled class order, as in ILSVRC2012.
    val_labels = plan.permutation(np.repeat(np.arange(len(specs)), val_per_class)).tolist()
    for i, label in enumerate(val_labels, start=1):
        stem = f"ILSVRC2012_val_{i:08d}"
        emit("val", specs[label], stem, (2, i))
        imagesets["val"].append(stem)

    if ilsvrc:
        mapping = "".join(f"{s.wnid} {s.name}\n" for s in specs)
        _write(root / "LOC_synset_mapping.txt", mapping)
        for split, rows in solutions.items():
            body = "ImageId,PredictionString\n" + "".join(r + "\n" for r in sorted(rows))
            _write(root / f"LOC_{split}_solution.csv", body)
        sets = root / "ILSVRC" / "ImageSets" / "CLS-LOC"
        for name, stems in imagesets.items():
            _write(sets / f"{name}.txt", "".join(f"{s} {i}\n" for i, s in enumerate(stems, 1)))
    return {
        "path": str(root),
        "layout": layout,
        "classes": len(specs),
        "train": len(specs) * train_per_class,
        "val": len(specs) * val_per_class,
        "boxes": n_boxes,
    }


def _write_caltech(
    root: Path,
    specs: list[ClassSpec],
    seed: int,
    counts: list[int],
    n_background: int,
    plan: np.random.Generator,
    advance,
) -> dict:
    cats = root / "101_ObjectCategories"
    n_gray = 0
    for spec, count in zip(specs, counts, strict=True):
        # The real set holds some single-channel JPEGs; ~15% here, at least one per class.
        gray = set(
            plan.choice(np.arange(1, count + 1), max(1, round(0.15 * count)), False).tolist()
        )
        for j in range(1, count + 1):
            rng = _image_rng(seed, 3, spec.index, j)
            w, h = _caltech_size(rng)
            # Caltech objects are big and centred-ish.
            img, _ = draw_sample(rng, specs, spec.index, w, h, scale=(0.55, 0.85))
            if j in gray:
                img = img.convert("L")
                n_gray += 1
            _save_jpeg(img, cats / spec.wnid / f"image_{j:04d}.jpg")
            advance()
    for j in range(1, n_background + 1):
        rng = _image_rng(seed, 4, j)
        w, h = _caltech_size(rng)
        _save_jpeg(draw_background(rng, w, h), cats / "BACKGROUND_Google" / f"image_{j:04d}.jpg")
        advance()
    # The real archive carries this stray non-image file (PAPERS.md §4.2); readers must skip it.
    _write(cats / "BACKGROUND_Google" / "tmp", "not an image\n")
    return {
        "path": str(root),
        "classes": len(specs),
        "images": sum(counts),
        "grayscale": n_gray,
        "background": n_background,
    }


def _voc_size(rng: np.random.Generator) -> tuple[int, int]:
    # VOC 2012 images are at most 500 px on the longer side, mostly 500 x 375 or 375 x 500.
    long, short = 500, int(rng.integers(300, 401))
    return (long, short) if rng.random() < 0.7 else (short, long)


def _write_voc(
    root: Path,
    specs: list[ClassSpec],
    seed: int,
    n_train: int,
    n_val: int,
    advance,
) -> dict:
    """``VOCdevkit/VOC2012``: JPEGImages, Annotations (with difficult flags) and the
    classification lists of ImageSets/Main, for all 20 class names (absent ones are all -1)."""
    plan = np.random.default_rng(np.random.SeedSequence([seed, 5]))
    n = n_train + n_val
    ids = [f"2012_{i:06d}" for i in range(1, n + 1)]
    # Train and val interleave over the id range, as in the real lists.
    split_of = dict(zip(ids, plan.permutation(["train"] * n_train + ["val"] * n_val), strict=True))
    # First (largest) objects cycle over the classes so every present class has images.
    firsts = plan.permutation(np.arange(n) % len(specs)).tolist()
    labels: dict[str, list[int]] = {}
    n_objects = n_difficult = 0
    for image_id, first in zip(ids, firsts, strict=True):
        rng = _image_rng(seed, 6, int(image_id[5:]))
        w, h = _voc_size(rng)
        img, boxes = draw_sample(rng, specs, first, w, h, objects=3, scale=(0.35, 0.6))
        # Some objects are flagged difficult, as VOC annotators did for hard-to-see ones; the
        # first one rarely, so a few images hold a class only as a difficult object (label 0).
        hard = [bool(rng.random() < (0.1 if i == 0 else 0.3)) for i in range(len(boxes))]
        _save_jpeg(img, root / "JPEGImages" / f"{image_id}.jpg")
        xml = voc_xml("VOC2012", image_id, (w, h), boxes, specs, filename=f"{image_id}.jpg",
                      database="The VOC2012 Database", difficult=hard)  # fmt: skip
        _write(root / "Annotations" / f"{image_id}.xml", xml)
        row = [-1] * len(VOC_CLASSES)
        for box, difficult in zip(boxes, hard, strict=True):
            row[box.label] = max(row[box.label], 0 if difficult else 1)
        labels[image_id] = row
        n_objects += len(boxes)
        n_difficult += sum(hard)
        advance()
    main = root / "ImageSets" / "Main"
    for split in ("train", "val", "trainval"):
        members = [i for i in ids if split in ("trainval", split_of[i])]
        _write(main / f"{split}.txt", "".join(f"{i}\n" for i in members))
        for c, name in enumerate(VOC_CLASSES):
            # The devkit's format: "%s %2d" (two spaces before 1 and 0).
            body = "".join(f"{i} {labels[i][c]:2d}\n" for i in members)
            _write(main / f"{name}_{split}.txt", body)
    return {
        "path": str(root),
        "classes": len(specs),
        "train": n_train,
        "val": n_val,
        "objects": n_objects,
        "difficult": n_difficult,
    }
