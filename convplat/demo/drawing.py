"""The synthetic classes and how one image of them is drawn, for ``convplat demo-data``.

Each class is one shape x colour (ImageNet-like, Caltech-like and the 20 VOC names); an image
shows procedurally drawn objects on a cluttered background, with tight boxes. ImageNet-like
images also hold smaller, unboxed distractors of other classes, and every background avoids
all the classes' colours alike: the class is then told by the labelled (largest) object only,
not by which colours the image holds, and covering that object lets the others win, as ZFNet's
occlusion study (§4.2) needs. Every function takes its random generator, so the same seed draws
the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from convplat.pipeline.readers import VOC_CLASSES

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
# The ten default classes first, the ones that are told apart most easily (diamond and hexagon,
# close to a square and a disc at low resolution, come last).
IMAGENET_SHAPES = ("disc", "triangle", "square", "star", "cross", "ring", "crescent", "arrow",
                   "heart", "frame", "diamond", "hexagon")  # fmt: skip
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
class LabelledBox:
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
    """The first ``n`` ImageNet-like classes: a shape in a colour of its own each (the first ten
    differ in both); sorted wnid order = class order."""
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


def _place(
    rng: np.random.Generator,
    shape: str,
    size: tuple[int, int],
    radius: float,
    taken: list[tuple[int, int, int, int]],
) -> Image.Image | None:
    """The mask of ``shape`` at a random spot where its box overlaps none of ``taken`` (None
    when 20 tries find no free spot)."""
    width, height = size
    for _ in range(20):
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        angle, stretch = rng.uniform(0, 2 * math.pi), rng.uniform(0.85, 1.15)
        mask = _object_mask(shape, size, cx, cy, radius, angle, stretch)
        bbox = mask.getbbox()
        if bbox is not None and not _overlaps(bbox, taken):
            return mask
    return None


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
    distractors: int = 0,
) -> tuple[Image.Image, list[LabelledBox]]:
    """Draw one RGB image whose first (largest) object is of class ``class_index``.

    Args:
        objects: draw 1..objects objects (a random count); extra objects are of random classes,
            smaller than the first and placed so that no two boxes overlap (one that finds no
            free spot after a few tries is left out).
        scale: range of the first object's diameter as a fraction of the shorter side.
        clutter: False paints the objects on a plain grey background (for tests).
        distractors: also draw 1..distractors unboxed objects of the other classes (their
            shapes and colours), 12-25% of the shorter side (smaller than the first object,
            overlapping no box): the class is then told only by the labelled, largest object,
            and covering it lets the others win (ImageNet's boxes, too, mark only the
            labelled class).

    Returns:
        The image and one box per drawn object (distractors have none), the first one of
        ``class_index``.
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
    main = classes[class_index]
    others = [c for c in classes if c.shape != main.shape and c.colour != main.colour]
    extra: list[tuple[ClassSpec, float]] = []
    if distractors > 0 and others:
        n = int(rng.integers(1, distractors + 1))
        picks = rng.integers(0, len(others), n)
        sizes = rng.uniform(0.12, 0.25, n) * short
        extra = [(others[int(i)], float(d)) for i, d in zip(picks, sizes, strict=True)]
    colours = [s.colour for s in specs + [spec for spec, _ in extra]]
    # The background avoids every class's colour, not this image's: its statistics are the
    # same whatever the class.
    avoid = list(dict.fromkeys([c.colour for c in classes] + colours))
    img = draw_background(rng, width, height, avoid=avoid, clutter=clutter)
    canvas = np.array(img)
    boxes: list[LabelledBox] = []
    taken: list[tuple[int, int, int, int]] = []
    for spec, d in zip(specs, diam, strict=False):
        mask_img = _place(rng, spec.shape, (width, height), d / 2, taken)
        if mask_img is None:
            continue
        bbox = mask_img.getbbox()
        taken.append(bbox)
        _paint(canvas, np.asarray(mask_img.crop(bbox)) > 0, bbox[0], bbox[1], spec, rng)
        x0, y0, x1, y1 = bbox  # PIL: half-open, 0-based -> ImageNet: inclusive, 1-based
        boxes.append(LabelledBox(spec.index, x0 + 1, y0 + 1, x1, y1))
    for spec, d in extra:
        mask_img = _place(rng, spec.shape, (width, height), d / 2, taken)
        if mask_img is not None:
            bbox = mask_img.getbbox()
            taken.append(bbox)
            mask = np.asarray(mask_img.crop(bbox)) > 0
            _paint(canvas, mask, bbox[0], bbox[1], spec, rng)
    return Image.fromarray(canvas, "RGB"), boxes
