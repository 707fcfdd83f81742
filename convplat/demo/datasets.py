"""``convplat demo-data``: synthetic ImageNet-like, Caltech-101-like and PASCAL-VOC-2012-like
trees, written in the real archives' layouts (PAPERS.md §4).

Output is a pure function of the arguments: the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from convplat.demo.drawing import (
    MAX_CALTECH_CLASSES,
    MAX_CLASSES,
    MAX_VOC_CLASSES,
    ClassSpec,
    LabelledBox,
    caltech_class_specs,
    draw_background,
    draw_sample,
    imagenet_class_specs,
    voc_class_specs,
)
from convplat.errors import ConfigError
from convplat.pipeline.readers import VOC_CLASSES

# `imagefolder` is what `prepare --layout` calls this tree; `folder` stays an accepted alias.
LAYOUTS = ("imagefolder", "ilsvrc")
_LAYOUT_ALIASES = {"folder": "imagefolder"}
JPEG_QUALITY = 90
MAX_OBJECTS_PER_IMAGE = 10
# The labelled object's diameter as a fraction of the shorter side: above the distractors'
# 12-25%, so "the largest object" names the class.
IMAGENET_SCALE = (0.35, 0.7)
DISTRACTORS = 3  # unboxed objects of other classes per image, at most (one object per image)
MARKER = ".convplat-demo.json"  # marks a directory this module may delete and rewrite

# --- writing ------------------------------------------------------------------------------------


def voc_xml(
    folder: str,
    stem: str,
    size: tuple[int, int],
    boxes: Sequence[LabelledBox],
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


def prediction_string(boxes: Sequence[LabelledBox], classes: Sequence[ClassSpec]) -> str:
    """Kaggle LOC ``PredictionString``: ``wnid xmin ymin xmax ymax `` repeated."""
    return "".join(f"{classes[b.label].wnid} {b.xmin} {b.ymin} {b.xmax} {b.ymax} " for b in boxes)


# Every file this run writes (absolute paths), so that a re-run removes only its own stale files.
_written: set[Path] = set()


def _save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=JPEG_QUALITY)
    _written.add(path)


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="\n")
    else:
        path.write_bytes(data)
    _written.add(path)


_SPLIT_NAMES = ("train", "val", "test")


def _check_not_in_a_dataset(out: Path) -> None:
    """Refuse an ``out`` inside a dataset tree: its new ``imagenet/``, ``caltech101/`` folders
    would become classes of that dataset the next time it is read (``prepare``, ``transfer``).
    A tree demo-data wrote carries its marker; another is told by class folders named like
    WordNet ids (``n01440764``) or by ``out`` being a split folder of a tree."""
    here = out.resolve()
    for parent in (here, *here.parents):
        if (parent / MARKER).is_file():
            raise ConfigError(
                f"--out {out} is inside {parent}, a dataset demo-data wrote; choose another --out"
            )
    if here.is_dir():
        named = [p.name for p in here.iterdir() if p.is_dir()]
        wnids = [n for n in named if len(n) == 9 and n[0] == "n" and n[1:].isdigit()]
        split = here.name in _SPLIT_NAMES and any(
            (here.parent / name).is_dir() for name in _SPLIT_NAMES if name != here.name
        )
        if wnids or split:
            what = f"class folders such as {wnids[0]}" if wnids else "a split of a dataset"
            raise ConfigError(
                f"--out {out} looks like a dataset ({what}): demo-data's folders would become "
                "classes of it; choose another --out"
            )


def _claim_dir(path: Path, params: dict) -> list[str]:
    """Make ``path`` ready for writing and return the files an earlier demo-data wrote there.

    Nothing is deleted here: files are rewritten in place and, at the end, only the earlier
    run's files that this run did not write again are removed (:func:`_remove_stale`), so files
    a user added to the tree survive. A non-empty directory without the marker is refused.
    """
    old: list[str] = []
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"expected a directory at {path}, got a file; choose another --out")
        if (path / MARKER).is_file():
            try:
                old = list(json.loads((path / MARKER).read_text()).get("files", []))
            except (OSError, ValueError, AttributeError):
                old = []  # an unreadable marker: overwrite in place, delete nothing
        elif any(path.iterdir()):
            raise ConfigError(
                f"expected {path} to be missing or empty, got a directory that demo-data did "
                "not write; choose another --out"
            )
    path.mkdir(parents=True, exist_ok=True)
    # Keep the earlier list in the marker until this run ends, so a killed run forgets nothing.
    _write_marker(path, params, old)
    return old


def _write_marker(path: Path, params: dict, files: list[str]) -> None:
    body = {**params, "files": sorted(files)}
    (path / MARKER).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _remove_stale(path: Path, params: dict, old: list[str]) -> None:
    """Delete the earlier run's files that this run did not write (and folders left empty)."""
    root = path.resolve()
    written = (p.resolve() for p in _written)
    mine = sorted(str(p.relative_to(root)) for p in written if p.is_relative_to(root))
    for name in sorted(set(old) - set(mine)):
        stale = root / name
        if ".." in Path(name).parts or not stale.is_file():
            continue
        stale.unlink()
        parent = stale.parent
        while parent != root and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    _write_marker(path, params, mine)


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
    layout: str = "imagefolder",
    train_per_class: int = 100,
    val_per_class: int = 20,
    caltech_classes: int = 6,
    caltech_per_class: int = 35,
    objects_per_image: int = 1,
    distractors: int | None = None,
    voc: bool = True,
    voc_classes: int = MAX_VOC_CLASSES,
    voc_train: int = 200,
    voc_val: int = 200,
    progress: bool = False,
) -> dict:
    """Write a synthetic ``out/imagenet``, ``out/caltech101`` and (``voc``)
    ``out/VOCdevkit/VOC2012``; return a short summary.

    Args:
        layout: ``imagefolder`` (``train/<wnid>``, ``val/<wnid>``, VOC XML under
            ``Annotations/``) or ``ilsvrc`` (Kaggle ``ILSVRC/Data/CLS-LOC`` with
            ``LOC_*`` files and XML under ``ILSVRC/Annotations/CLS-LOC``); ``folder`` is
            accepted for ``imagefolder``.
        caltech_per_class: mean images per Caltech class; counts are spread unevenly over
            about +-30% of it, as in the real set.
        objects_per_image: up to this many objects per ImageNet image, each with a box; the
            image label is the first (largest) one's class.
        distractors: up to this many smaller, unboxed objects of the other classes per
            ImageNet image (at least one when > 0), so that the class depends on the labelled
            object alone (0: none). Default: 3 with one object per image, 0 with several (a
            detector would learn unboxed objects as background and be scored on them).
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
    if distractors is None:
        distractors = DISTRACTORS if objects_per_image == 1 else 0
    distractors = _check_int("distractors", distractors, 0, MAX_OBJECTS_PER_IMAGE)
    voc_classes = _check_int("voc_classes", voc_classes, 2, MAX_VOC_CLASSES)
    voc_train = _check_int("voc_train", voc_train, 1)
    voc_val = _check_int("voc_val", voc_val, 1)
    layout = _LAYOUT_ALIASES.get(layout, layout)
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
        distractors=distractors,
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
    roots = [imagenet, caltech, devkit] if voc else [imagenet, caltech]
    try:
        _check_not_in_a_dataset(out)
        earlier = {root: _claim_dir(root, params) for root in roots}
    except OSError as exc:  # a file on the way, a read-only place, a name too long ...
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"--out {out}: cannot write there ({reason}); choose another --out"
        ) from None
    _written.clear()
    with _progress(progress, total) as advance:
        inet = _write_imagenet(
            imagenet,
            specs,
            seed,
            layout,
            train_per_class,
            val_per_class,
            objects_per_image,
            distractors,
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
    for root in roots:
        _remove_stale(root, params, earlier[root])
    _written.clear()
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
    distractors: int,
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
        img, boxes = draw_sample(
            rng, specs, spec.index, w, h, objects=objects, scale=IMAGENET_SCALE,
            distractors=distractors,
        )  # fmt: skip
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
