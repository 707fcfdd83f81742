"""Raw dataset readers: list an ImageNet, Caltech or folder-of-class-folders tree into items.

Readers only *list* files (``os.scandir``, no decoding, no per-file ``stat``); ``image.py``
decodes later and rejects what it cannot read. Layouts (DESIGN.md, PAPERS.md §4):

- ``imagefolder``: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` (a flat ``val/`` is labelled by
  ``LOC_val_solution.csv`` or TF's ``imagenet_2012_validation_synset_labels.txt`` in the root);
  boxes from PASCAL-VOC XML under ``Annotations/`` or ``bbox/`` and from ``LOC_*_solution.csv``.
- ``ilsvrc``: Kaggle LOC, ``ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}`` beside
  ``LOC_synset_mapping.txt`` and ``LOC_{train,val}_solution.csv``; XML fallback under
  ``ILSVRC/Annotations/CLS-LOC``.
- ``caltech101`` / ``caltech256``: ``101_ObjectCategories/<class>/``,
  ``256_ObjectCategories/NNN.name/``; background classes only on request; all split "train".
- ``folder``: ``<class>/*`` or ``{train,val,test}/<class>/*``.
- ``voc2012`` (``read_voc``, for classification transfer): ``VOCdevkit/VOC2012/JPEGImages``,
  ``ImageSets/Main/{train,val}.txt`` and ``<class>_{train,val}.txt``, ``Annotations/*.xml``.

Boxes are ``(x1, y1, x2, y2)`` in original pixels, 0-based, x2/y2 exclusive: ImageNet's 1-based
inclusive ``(xmin, ymin, xmax, ymax)`` becomes ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""

from __future__ import annotations

import csv
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from convplat.errors import DatasetError

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "VOC_CLASSES",
    "ClassInfo",
    "DatasetListing",
    "Item",
    "VocListing",
    "detect_layout",
    "read_dataset",
    "read_voc",
]

LAYOUTS = ("imagefolder", "ilsvrc", "caltech101", "caltech256", "folder")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

Box = tuple[float, float, float, float]

# Split folder names and the split they stand for; anything else beside them is not a split.
_SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_WNID = re.compile(r"n\d{8}")
_CALTECH256_DIR = re.compile(r"(\d{3})\.(.+)")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_LOC_FILES = ("LOC_synset_mapping.txt", "LOC_val_solution.csv", "LOC_train_solution.csv")
# Files that name ImageNet classes: "<wnid> <name>" per line (Kaggle, Caffe, full ImageNet).
_NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt")
# TF Inception's val ground truth: line i holds the wnid of ILSVRC2012_val_{i:08d}.
_TF_VAL_LABELS = "imagenet_2012_validation_synset_labels.txt"
_CALTECH101_BACKGROUND = "BACKGROUND_Google"
# Only look one level down for a wrapped dataset (e.g. caltech-101/101_ObjectCategories) when
# the root has this few sub-folders, so detection stays O(1) on a 1000-class folder.
_MAX_WRAPPER_CHILDREN = 8
_ANNOTATION_DIRS = frozenset({"Annotations", "bbox", "ImageSets"})

_EXPECTED = {
    "imagefolder": "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    "ilsvrc": "ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/} beside LOC_synset_mapping.txt and "
    "LOC_val_solution.csv",
    "caltech101": "101_ObjectCategories/<class>/image_NNNN.jpg",
    "caltech256": "256_ObjectCategories/NNN.name/NNN_MMMM.jpg",
    "folder": "<class>/*.jpg or train/<class>/*.jpg",
}
_EXPECTED_ANY = (
    "train/<wnid>/*.JPEG, ILSVRC/Data/CLS-LOC/..., 101_ObjectCategories/, 256_ObjectCategories/ "
    "or folders of class folders"
)
_DEMO_HINT = "run `convplat demo-data` to make a synthetic set"


@dataclass(frozen=True, slots=True)
class ClassInfo:
    """One class: its index (label), folder name / synset id and human-readable name."""

    index: int
    wnid: str
    name: str


@dataclass(frozen=True, slots=True)
class Item:
    """One labelled image file; ``key`` is unique in the dataset and webdataset-safe."""

    path: str
    split: str
    label: int
    key: str
    boxes: tuple[Box, ...] = ()
    box_labels: tuple[int, ...] = ()


@dataclass
class DatasetListing:
    """Everything a reader found: classes, items sorted by (split, path), and what it skipped."""

    root: str
    layout: str
    classes: list[ClassInfo]
    items: list[Item]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def split_counts(self) -> dict[str, int]:
        """Items per split, in train, val, test order."""
        counts = Counter(item.split for item in self.items)
        return {s: counts[s] for s in sorted(counts, key=lambda s: (_SPLIT_ORDER.get(s, 9), s))}


# A listed file before keys and boxes are attached: (split, path, label, group, stem); the
# group (class folder, or split for flat folders) disambiguates repeated stems in keys.
_Record = tuple[str, str, int, str, str]


# --- public entry points ------------------------------------------------------------------------


def detect_layout(root: str | os.PathLike) -> str:
    """Name the layout of the dataset under ``root`` (one of ``LAYOUTS``).

    Raises:
        DatasetError: ``root`` is missing or holds nothing we recognise.
    """
    return _locate(_check_root(root))[0]


def read_dataset(
    root: str | os.PathLike, layout: str = "auto", *, include_background: bool = False
) -> DatasetListing:
    """List the labelled images under ``root``.

    Args:
        root: the dataset directory (or a folder that wraps it one level up).
        layout: one of ``LAYOUTS``, or ``"auto"`` to detect it.
        include_background: keep Caltech's ``BACKGROUND_Google`` / ``257.clutter`` as classes.

    Returns:
        The listing; ``items`` sorted by (split, path), ``skipped`` lists stray entries.

    Raises:
        DatasetError: missing root, unknown or unrecognisable layout, or no images.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
    top = _check_root(root)
    if layout == "auto":
        layout, base = _locate(top)
    else:
        base = _locate_forced(top, layout)

    skipped: list[tuple[str, str]] = []
    boxes: _BoxSource | None = None
    if layout == "ilsvrc":
        classes, records, boxes = _read_ilsvrc(base, skipped)
    elif layout == "imagefolder":
        classes, records, boxes = _read_imagefolder(base, skipped)
    elif layout in ("caltech101", "caltech256"):
        classes, records = _read_caltech(base, layout, include_background, skipped)
    else:
        classes, records = _read_folder(base, skipped)

    if not records:
        example = (
            f"; skipped {len(skipped)} entries, e.g. {skipped[0][0]}: {skipped[0][1]}"
            if skipped
            else ""
        )
        raise DatasetError(
            f"no images found under {top} (layout {layout}): expected {_EXPECTED[layout]}"
            f"{example}; check the path or {_DEMO_HINT}"
        )
    records.sort()
    keys = _assign_keys(records)
    items = []
    for (split, path, label, _, stem), key in zip(records, keys, strict=True):
        if boxes is None:
            items.append(Item(path, split, label, key))
        else:
            items.append(Item(path, split, label, key, *boxes.lookup(stem)))
    return DatasetListing(top, layout, classes, items, skipped)


# --- locating the layout ------------------------------------------------------------------------


def _check_root(root: str | os.PathLike) -> str:
    path = os.path.abspath(os.fspath(root))
    if not os.path.exists(path):
        raise DatasetError(
            f"dataset directory {path} does not exist: expected {_EXPECTED_ANY}; "
            f"pass the right path or {_DEMO_HINT}"
        )
    if not os.path.isdir(path):
        raise DatasetError(f"dataset path {path} is not a directory: expected {_EXPECTED_ANY}")
    return path


def _locate(root: str) -> tuple[str, str]:
    """(layout, base directory for its reader), trying the root, then one wrapper level down."""
    subdirs = _subdir_names(root)
    found = _match_specific(root, subdirs)
    if found:
        return found
    if len(subdirs) <= _MAX_WRAPPER_CHILDREN:
        for name in subdirs:
            if name in _ANNOTATION_DIRS:  # Annotations/train/<wnid>/ is not an image tree
                continue
            child = os.path.join(root, name)
            found = _match_specific(child, _subdir_names(child))
            if found:
                return found
    if _has_loc_files(root):  # csvs without ILSVRC/Data: the ilsvrc reader says what is missing
        return "ilsvrc", root
    if subdirs:
        return "folder", root
    raise DatasetError(
        f"cannot recognise a dataset layout in {root}: expected {_EXPECTED_ANY}; "
        f"pass --layout or {_DEMO_HINT}"
    )


def _match_specific(d: str, subdirs: list[str]) -> tuple[str, str] | None:
    if _ilsvrc_dirs(d)[1] is not None:
        return "ilsvrc", d
    base = _match_caltech101(d, subdirs)
    if base:
        return "caltech101", base
    base = _match_caltech256(d, subdirs)
    if base:
        return "caltech256", base
    if _looks_imagefolder(d, subdirs):
        return "imagefolder", d
    return None


def _locate_forced(root: str, layout: str) -> str:
    """The base directory for a layout the user named; falls back to the root itself."""
    if layout == "folder":
        return root
    subdirs = _subdir_names(root)
    candidates = [(root, subdirs)]
    if len(subdirs) <= _MAX_WRAPPER_CHILDREN:
        for name in subdirs:
            if name not in _ANNOTATION_DIRS:
                child = os.path.join(root, name)
                candidates.append((child, _subdir_names(child)))
    for d, names in candidates:
        if layout == "ilsvrc" and _ilsvrc_dirs(d)[1] is not None:
            return d
        if layout == "caltech101" and (base := _match_caltech101(d, names)):
            return base
        if layout == "caltech256" and (base := _match_caltech256(d, names)):
            return base
        if layout == "imagefolder" and _looks_imagefolder(d, names):
            return d
    if layout == "imagefolder" and not any(n in _SPLIT_DIRS for n in subdirs):
        raise DatasetError(
            f"{root} is not an ImageFolder tree: expected {_EXPECTED['imagefolder']}; "
            "pass the folder that holds train/ and val/, or another --layout"
        )
    # ilsvrc: its reader explains what is missing; caltech: the root is the category folder.
    return root


def _subdir_names(d: str) -> list[str]:
    """Sorted names of the non-hidden sub-directories of ``d``."""
    try:
        with os.scandir(d) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []


def _has_loc_files(d: str) -> bool:
    return any(os.path.isfile(os.path.join(d, name)) for name in _LOC_FILES)


def _ilsvrc_dirs(d: str) -> tuple[str, str | None]:
    """(folder holding the LOC_* files, ILSVRC/Data/CLS-LOC or None) for a candidate root.

    Accepts the Kaggle root (parent of ``ILSVRC/``), the ``ILSVRC`` folder itself (csvs in it or
    its parent) and the ``CLS-LOC`` data folder (csvs three levels up).
    """
    j = os.path.join
    data = j(d, "ILSVRC", "Data", "CLS-LOC")
    if os.path.isdir(data):
        return d, data
    data = j(d, "Data", "CLS-LOC")
    if os.path.isdir(data):
        return (d if _has_loc_files(d) else os.path.dirname(d)), data
    if os.path.basename(d) == "CLS-LOC" and (
        os.path.isdir(j(d, "train")) or os.path.isdir(j(d, "val"))
    ):
        top = os.path.dirname(os.path.dirname(os.path.dirname(d)))
        return (top if _has_loc_files(top) else d), d
    return d, None


def _match_caltech101(d: str, subdirs: list[str]) -> str | None:
    if os.path.basename(d) == "101_ObjectCategories" or _CALTECH101_BACKGROUND in subdirs:
        return d
    if "101_ObjectCategories" in subdirs:
        return os.path.join(d, "101_ObjectCategories")
    return None


def _match_caltech256(d: str, subdirs: list[str]) -> str | None:
    if os.path.basename(d) == "256_ObjectCategories":
        return d
    if "256_ObjectCategories" in subdirs:
        return os.path.join(d, "256_ObjectCategories")
    numbered = sum(1 for n in subdirs if _CALTECH256_DIR.fullmatch(n))
    if subdirs and 2 * numbered > len(subdirs):
        return d
    return None


def _looks_imagefolder(d: str, subdirs: list[str]) -> bool:
    """A train/ (or val/) whose sub-folders are mostly ImageNet wnids."""
    for split in ("train", "val"):
        if split in subdirs:
            names = _subdir_names(os.path.join(d, split))
            if names and 2 * sum(1 for n in names if _WNID.fullmatch(n)) > len(names):
                return True
    return False


# --- listing ------------------------------------------------------------------------------------


def _scan(d: str) -> list[os.DirEntry]:
    """Non-hidden entries of ``d``, sorted by name (hidden files are ignored silently)."""
    with os.scandir(d) as it:
        entries = [e for e in it if not e.name.startswith(".")]
    entries.sort(key=lambda e: e.name)
    return entries


def _split_entries(entries: Iterable[os.DirEntry]) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    dirs, files = [], []
    for e in entries:
        (dirs if e.is_dir() else files).append(e)
    return dirs, files


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_class_dir(
    class_dir: str,
    split: str,
    label: int,
    records: list[_Record],
    skipped: list[tuple[str, str]],
) -> None:
    """Append the image files of one class folder; nested folders and other files are skipped."""
    group = os.path.basename(class_dir)
    extensions = IMAGE_EXTENSIONS
    try:
        it = os.scandir(class_dir)
    except OSError as e:  # e.g. permission denied: record it, list the rest
        skipped.append((class_dir, f"unreadable directory: {e.strerror}"))
        return
    # Hot loop (1.28M ImageNet files): scandir's d_type answers is_dir/is_file without a stat.
    with it:
        for entry in it:
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir():  # e.g. Caltech-256's 056.dog/greg
                skipped.append((entry.path, "unexpected directory"))
                continue
            stem, dot, ext = name.rpartition(".")  # splitext, without its per-call overhead
            if not dot or ("." + ext).lower() not in extensions:  # 198.spider/RENAME2, tmp
                skipped.append((entry.path, "not an image file name"))
            elif not entry.is_file():
                skipped.append((entry.path, "not a regular file"))
            else:
                records.append((split, entry.path, label, group, stem))


def _list_flat_files(
    files: Iterable[os.DirEntry],
    split: str,
    labels: dict[str, int] | None,
    reason: str,
    records: list[_Record],
    skipped: list[tuple[str, str]],
) -> None:
    """Files directly in a split folder: labelled by ``labels[stem]`` or skipped with ``reason``."""
    for entry in files:
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() not in IMAGE_EXTENSIONS:
            skipped.append((entry.path, "not an image file name"))
        elif labels is not None and stem in labels:
            records.append((split, entry.path, labels[stem], split, stem))
        else:
            skipped.append((entry.path, reason))


def _read_split_folders(
    base: str,
    skipped: list[tuple[str, str]],
    flat_labels: dict[str, str] | None,
    other_dirs_ok: Iterable[str] = (),
) -> tuple[list[str], list[_Record]]:
    """List ``{train,val,test}/<class>/`` folders; flat val files are labelled by ``flat_labels``.

    Returns the sorted class names (class folders plus the wnids labelling flat val files) and
    the records. Folders beside the splits, other than ``other_dirs_ok``, are recorded as skipped.
    """
    splits = []
    for e in _scan(base):
        if not e.is_dir():
            continue
        split = _SPLIT_DIRS.get(e.name)
        if split is None:
            if e.name not in other_dirs_ok:
                skipped.append((e.path, "not a split directory"))
            continue
        dirs, files = _split_entries(_scan(e.path))
        path = e.path
        if split == "test" and not dirs:
            skipped.append((path, "no labels (unlabelled test split)"))
            continue
        splits.append((split, path, dirs, files))

    wnids: set[str] = set()
    for _, _, dirs, _ in splits:
        wnids.update(d.name for d in dirs)
    if flat_labels:
        for split, _, _, files in splits:
            if split == "val":
                wnids.update(
                    flat_labels[s]
                    for f in files
                    if (s := os.path.splitext(f.name)[0]) in flat_labels
                )
    classes = sorted(wnids)
    index = {w: i for i, w in enumerate(classes)}

    records: list[_Record] = []
    for split, _, dirs, files in splits:
        for d in dirs:
            _list_class_dir(d.path, split, index[d.name], records, skipped)
        if split == "val" and flat_labels is not None:
            labels = {s: index[w] for s, w in flat_labels.items() if w in index}
            _list_flat_files(files, split, labels, "no label", records, skipped)
        else:  # an unlabelled flat val folder, or images outside any class folder
            reason = "no label" if split == "val" else "no class"
            _list_flat_files(files, split, None, reason, records, skipped)
    return classes, records


def _read_imagefolder(
    base: str, skipped: list[tuple[str, str]]
) -> tuple[list[ClassInfo], list[_Record], _BoxSource]:
    csv_rows: dict[str, _CsvRow] = {}
    flat_labels: dict[str, str] | None = None
    for split in ("train", "val"):
        path = os.path.join(base, f"LOC_{split}_solution.csv")
        if os.path.isfile(path):
            rows = _read_solution_csv(path, skipped)
            csv_rows.update(rows)
            if split == "val":
                flat_labels = {stem: row[0] for stem, row in rows.items()}
    if flat_labels is None:
        flat_labels = _read_tf_val_labels(os.path.join(base, _TF_VAL_LABELS))
    wnids, records = _read_split_folders(base, skipped, flat_labels, _ANNOTATION_DIRS)
    names = _read_class_names(base)
    classes = [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)]
    xml_roots = [os.path.join(base, "Annotations"), os.path.join(base, "bbox")]
    return classes, records, _BoxSource(classes, csv_rows, xml_roots, skipped)


def _read_tf_val_labels(path: str) -> dict[str, str] | None:
    """TF Inception's val ground truth: line i is the wnid of ``ILSVRC2012_val_{i:08d}``."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        wnids = [line.strip() for line in f]
    return {f"ILSVRC2012_val_{i:08d}": w for i, w in enumerate(wnids, start=1) if w}


def _read_ilsvrc(
    base: str, skipped: list[tuple[str, str]]
) -> tuple[list[ClassInfo], list[_Record], _BoxSource]:
    csv_dir, data = _ilsvrc_dirs(base)
    if data is None:
        raise DatasetError(
            f"{base} is not an ILSVRC (Kaggle) tree: expected {_EXPECTED['ilsvrc']}; "
            "pass the folder that holds ILSVRC/ and the LOC_* files, or another --layout"
        )
    j = os.path.join
    mapping = j(csv_dir, "LOC_synset_mapping.txt")
    names = _read_name_file(mapping) if os.path.isfile(mapping) else {}
    csv_rows: dict[str, _CsvRow] = {}
    val_rows: dict[str, _CsvRow] = {}
    for split in ("train", "val"):
        path = j(csv_dir, f"LOC_{split}_solution.csv")
        if os.path.isfile(path):
            rows = _read_solution_csv(path, skipped)
            csv_rows.update(rows)
            if split == "val":
                val_rows = rows

    train, val = j(data, "train"), j(data, "val")
    train_dirs, train_files = _split_entries(_scan(train)) if os.path.isdir(train) else ([], [])
    val_dirs, val_files = _split_entries(_scan(val)) if os.path.isdir(val) else ([], [])
    if os.path.isdir(j(data, "test")):
        skipped.append((j(data, "test"), "no labels (unlabelled test split)"))

    # Class order is sorted wnid order (DESIGN.md); for the real mapping file it equals file order.
    if names:
        wnids = sorted(names)
    else:
        wnids = sorted({d.name for d in train_dirs + val_dirs} or {r[0] for r in val_rows.values()})
    classes = [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)]
    index = {w: i for i, w in enumerate(wnids)}

    records: list[_Record] = []
    for split, dirs, files in (("train", train_dirs, train_files), ("val", val_dirs, val_files)):
        for d in dirs:
            if d.name in index:
                _list_class_dir(d.path, split, index[d.name], records, skipped)
            else:
                skipped.append((d.path, "unknown class (not in LOC_synset_mapping.txt)"))
        if split == "train":
            _list_flat_files(files, split, None, "no class", records, skipped)
            continue
        labels = {}
        for stem, row in val_rows.items():
            if row[0] in index:
                labels[stem] = index[row[0]]
        _list_flat_files(files, split, labels, "no label", records, skipped)
    xml_root = j(os.path.dirname(os.path.dirname(data)), "Annotations", "CLS-LOC")
    return classes, records, _BoxSource(classes, csv_rows, [xml_root], skipped)


def _read_caltech(
    base: str, layout: str, include_background: bool, skipped: list[tuple[str, str]]
) -> tuple[list[ClassInfo], list[_Record]]:
    dirs, files = _split_entries(_scan(base))
    for f in files:
        skipped.append((f.path, "no class"))
    if not include_background:
        dirs = [d for d in dirs if not _is_background(layout, d.name)]
    classes = []
    records: list[_Record] = []
    for i, d in enumerate(dirs):
        if layout == "caltech256" and (m := _CALTECH256_DIR.fullmatch(d.name)):
            name = m.group(2)  # 201.starfish-101 -> starfish-101
        else:
            name = d.name
        classes.append(ClassInfo(i, d.name, name))
        # The transfer protocol draws its own train/test splits (ZFNet §5.2).
        _list_class_dir(d.path, "train", i, records, skipped)
    return classes, records


def _is_background(layout: str, name: str) -> bool:
    if layout == "caltech101":
        return name == _CALTECH101_BACKGROUND
    m = _CALTECH256_DIR.fullmatch(name)
    return m is not None and m.group(2) == "clutter"


def _read_folder(
    base: str, skipped: list[tuple[str, str]]
) -> tuple[list[ClassInfo], list[_Record]]:
    if os.path.isdir(os.path.join(base, "train")):
        wnids, records = _read_split_folders(base, skipped, None)
    else:
        dirs, files = _split_entries(_scan(base))
        for f in files:  # README, csvs... at the root are fine; images there have no class
            if _is_image_name(f.name):
                skipped.append((f.path, "no class"))
        wnids = [d.name for d in dirs]
        records = []
        for i, d in enumerate(dirs):
            _list_class_dir(d.path, "train", i, records, skipped)
    return [ClassInfo(i, w, w) for i, w in enumerate(wnids)], records


# --- keys ---------------------------------------------------------------------------------------


def _safe_key(text: str) -> str:
    return _KEY_UNSAFE.sub("_", text) or "_"


def _assign_keys(records: list[_Record]) -> list[str]:
    """Unique webdataset-safe keys, of one shape across the dataset where possible.

    The file stem if stems are unique (ImageNet, Caltech-256); else ``<class>_<stem>`` for every
    item (Caltech-101 repeats ``image_0001`` in each class); else ``<split>_<class>_<stem>`` if
    that is unique; else ``<class>_<stem>`` with ``-2``, ``-3``... on the clashes (``1.jpg``
    beside ``1.png``). webdataset splits a sample's files at the first '.' of the basename, so
    keys hold only ``[A-Za-z0-9_-]``.
    """
    keys = [_safe_key(r[4]) for r in records]
    if len(set(keys)) == len(keys):
        return keys
    keys = [_safe_key(f"{r[3]}_{r[4]}") for r in records]
    taken = set(keys)
    if len(taken) == len(keys):
        return keys
    wide = [_safe_key(f"{r[0]}_{r[3]}_{r[4]}") for r in records]
    if len(set(wide)) == len(wide):
        return wide
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k in seen:
            n = 2
            while f"{k}-{n}" in taken:
                n += 1
            k = keys[i] = f"{k}-{n}"
            taken.add(k)
        seen.add(k)
    return keys


# --- labels and boxes ---------------------------------------------------------------------------

# LOC csv row: (class wnid = first token, ((wnid, box), ...)).
_CsvRow = tuple[str, tuple[tuple[str, Box], ...]]


def _to_box(xmin: float, ymin: float, xmax: float, ymax: float) -> Box | None:
    """ImageNet/VOC 1-based inclusive corners -> 0-based, x2/y2 exclusive; None if empty."""
    x1, y1 = max(xmin - 1.0, 0.0), max(ymin - 1.0, 0.0)
    if xmax <= x1 or ymax <= y1:
        return None
    return (x1, y1, float(xmax), float(ymax))


def _read_solution_csv(path: str, skipped: list[tuple[str, str]]) -> dict[str, _CsvRow]:
    """Parse a Kaggle ``LOC_*_solution.csv`` once: ImageId -> (class wnid, boxes)."""
    rows: dict[str, _CsvRow] = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if lineno == 1 and row and row[0].strip() == "ImageId":
                continue
            if not row or not "".join(row).strip():
                continue
            tokens = row[1].split() if len(row) == 2 else []
            stem = row[0].strip()
            if not stem or not tokens or (len(tokens) > 1 and len(tokens) % 5):
                skipped.append((f"{path}:{lineno}", "unreadable csv row"))
                continue
            groups = []
            try:
                for g in range(0, len(tokens) - 4, 5):
                    box = _to_box(*(float(t) for t in tokens[g + 1 : g + 5]))
                    if box is not None:
                        groups.append((tokens[g], box))
            except ValueError:
                skipped.append((f"{path}:{lineno}", "unreadable csv row"))
                continue
            rows[stem] = (tokens[0], tuple(groups))
    return rows


def _parse_voc(path: str, skipped: list[tuple[str, str]]) -> tuple[tuple[str, Box], ...]:
    """(wnid, box) per ``<object>`` of a PASCAL-VOC XML file; unreadable files are skipped."""
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        skipped.append((path, f"unreadable annotation: {e}"))
        return ()
    out = []
    for obj in tree.getroot().iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        try:
            box = _to_box(*(float(bb.findtext(t, "")) for t in ("xmin", "ymin", "xmax", "ymax")))
        except ValueError:
            continue
        if box is not None:
            out.append(((obj.findtext("name") or "").strip(), box))
    return tuple(out)


def _index_xml(roots: list[str]) -> dict[str, str]:
    """stem -> path of every ``*.xml`` below the roots (first in sorted order wins)."""
    index: dict[str, str] = {}
    stack = [r for r in reversed(roots) if os.path.isdir(r)]
    while stack:
        d = stack.pop()
        try:
            entries = _scan(d)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            if e.is_dir():
                subdirs.append(e.path)
            elif e.name.endswith((".xml", ".XML")):
                index.setdefault(e.name[:-4], e.path)
        stack.extend(reversed(subdirs))
    return index


class _BoxSource:
    """Boxes per image stem: the LOC csv row when it has boxes, else the VOC XML file."""

    def __init__(
        self,
        classes: list[ClassInfo],
        csv_rows: dict[str, _CsvRow],
        xml_roots: list[str],
        skipped: list[tuple[str, str]],
    ) -> None:
        self._index = {c.wnid: c.index for c in classes}
        self._csv = csv_rows
        self._xml_roots = [r for r in xml_roots if os.path.isdir(r)]
        self._xml: dict[str, str] | None = (
            None  # built on the first miss: one walk, not a stat per file
        )
        self._skipped = skipped

    def lookup(self, stem: str) -> tuple[tuple[Box, ...], tuple[int, ...]]:
        row = self._csv.get(stem)
        groups = row[1] if row else ()
        if not groups and self._xml_roots:
            if self._xml is None:
                self._xml = _index_xml(self._xml_roots)
            path = self._xml.get(stem)
            if path is not None:
                groups = _parse_voc(path, self._skipped)
        boxes, labels = [], []
        for wnid, box in groups:
            label = self._index.get(wnid)
            if label is not None:  # a box naming an unknown class is dropped
                boxes.append(box)
                labels.append(label)
        return tuple(boxes), tuple(labels)


def _read_name_file(path: str) -> dict[str, str]:
    """``<wnid> <name>`` lines -> {wnid: name} (name defaults to the wnid)."""
    names: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts:
                names[parts[0]] = parts[1].strip() if len(parts) > 1 else parts[0]
    return names


def _read_class_names(base: str) -> dict[str, str]:
    for name in _NAME_FILES:
        path = os.path.join(base, name)
        if os.path.isfile(path):
            return _read_name_file(path)
    return {}


# --- PASCAL VOC 2012 classification (ZFNet Table 6) ---------------------------------------------

# The devkit's class order (VOCinit.m); per-class files are named after these.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_SPLITS = ("train", "val")  # the test labels are not public
_VOC_EXPECTED = (
    "JPEGImages/<id>.jpg, ImageSets/Main/{train,val}.txt and <class>_{train,val}.txt "
    "(or Annotations/<id>.xml)"
)
_VOC_LABELS = {"1": 1, "0": 0, "-1": -1}


@dataclass
class VocListing(DatasetListing):
    """A VOC classification listing: ``items`` (split ``train`` or ``val``) and, per item, one
    label per class of ``VOC_CLASSES``: 1 = present, 0 = only difficult objects (ignored when
    scoring, as the devkit does), -1 = absent.

    ``Item.label`` is the first present class (-1 if none); the targets are the ground truth.
    """

    targets: list[tuple[int, ...]] = field(default_factory=list)


def read_voc(root: str | os.PathLike, splits: Iterable[str] = VOC_SPLITS) -> VocListing:
    """List a PASCAL VOC 2012 tree for classification: ``VOCdevkit/VOC2012`` or a folder above it.

    Labels come from the devkit's per-class files ``ImageSets/Main/<class>_<split>.txt`` (lines
    ``<id> <1|0|-1>``); a class file that is missing, or that lacks an image, is replaced by the
    image's ``Annotations/<id>.xml`` (a non-difficult object -> 1, only difficult ones -> 0).
    Images whose JPEG or labels are missing are skipped with the reason.

    Raises:
        DatasetError: not a VOC tree, a split list that cannot be found, a malformed class file,
            or no usable image.
    """
    top = _check_root(root)
    base = _locate_voc(top)
    main = os.path.join(base, "ImageSets", "Main")
    jpeg_dir = os.path.join(base, "JPEGImages")
    xml_dir = os.path.join(base, "Annotations")
    try:
        with os.scandir(jpeg_dir) as it:
            jpegs = {e.name for e in it if not e.name.startswith(".")}
    except OSError as e:
        raise DatasetError(f"cannot list {jpeg_dir}: {e.strerror}") from None
    skipped: list[tuple[str, str]] = []
    annotations = _VocAnnotations(xml_dir, skipped)
    records: list[_Record] = []
    targets: dict[tuple[str, str], tuple[int, ...]] = {}
    for split in splits:
        class_labels = {c: _read_voc_class_file(main, c, split) for c in VOC_CLASSES}
        ids = _read_voc_split_list(main, split, class_labels)
        for image_id in ids:
            path = os.path.join(jpeg_dir, f"{image_id}.jpg")
            if f"{image_id}.jpg" not in jpegs:
                skipped.append((path, "missing image file"))
                continue
            row = []
            for c in VOC_CLASSES:
                labels = class_labels[c]
                value = labels.get(image_id) if labels is not None else None
                if value is None:
                    value = annotations.label(image_id, c)
                if value is None:
                    break
                row.append(value)
            else:
                label = row.index(1) if 1 in row else -1
                records.append((split, path, label, split, image_id))
                targets[(split, path)] = tuple(row)
                continue
            skipped.append((path, f"no label: no {c}_{split}.txt line and no readable XML"))
    if not records:
        example = (
            f"; skipped {len(skipped)}, e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        )
        raise DatasetError(
            f"no labelled images found under {base}: expected {_VOC_EXPECTED}{example}"
        )
    records.sort()
    keys = _assign_keys(records)
    items = [Item(r[1], r[0], r[2], k) for r, k in zip(records, keys, strict=True)]
    classes = [ClassInfo(i, c, c) for i, c in enumerate(VOC_CLASSES)]
    return VocListing(
        top, "voc2012", classes, items, skipped, [targets[(r[0], r[1])] for r in records]
    )


def _locate_voc(top: str) -> str:
    """The folder holding ``JPEGImages``: ``top``, ``top/VOC2012`` or ``top/VOCdevkit/VOC2012``."""
    j = os.path.join
    candidates = [top, j(top, "VOC2012"), j(top, "VOCdevkit", "VOC2012")]
    subdirs = _subdir_names(top)
    if len(subdirs) <= _MAX_WRAPPER_CHILDREN:
        candidates += [j(top, d) for d in subdirs]
    for d in candidates:
        if os.path.isdir(j(d, "JPEGImages")):
            return d
    raise DatasetError(
        f"{top} is not a PASCAL VOC 2012 tree: expected VOCdevkit/VOC2012/ with {_VOC_EXPECTED}; "
        "pass --data PATH or run `convplat demo-data` to make a synthetic one"
    )


def _read_voc_class_file(main: str, cls: str, split: str) -> dict[str, int] | None:
    """``<cls>_<split>.txt`` as {image id: 1|0|-1}; None when the file is missing."""
    path = os.path.join(main, f"{cls}_{split}.txt")
    if not os.path.isfile(path):
        return None
    labels: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in _VOC_LABELS:
                raise DatasetError(
                    f"{path}:{lineno}: expected '<image id> <1|0|-1>', got {line.strip()!r}"
                )
            labels[parts[0]] = _VOC_LABELS[parts[1]]
    return labels


def _read_voc_split_list(
    main: str, split: str, class_labels: dict[str, dict[str, int] | None]
) -> list[str]:
    """Image ids of ``<split>.txt`` (file order), else those of the split's class files."""
    path = os.path.join(main, f"{split}.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return [parts[0] for line in f if (parts := line.split())]
    ids = sorted({i for labels in class_labels.values() if labels for i in labels})
    if not ids:
        raise DatasetError(
            f"missing {path}: expected the {split} image list (ImageSets/Main/{split}.txt) or "
            f"the per-class files <class>_{split}.txt"
        )
    return ids


class _VocAnnotations:
    """Per-image class labels from ``Annotations/<id>.xml``, parsed on first use."""

    def __init__(self, xml_dir: str, skipped: list[tuple[str, str]]) -> None:
        self._dir = xml_dir
        self._skipped = skipped
        self._cache: dict[str, dict[str, int] | None] = {}

    def label(self, image_id: str, cls: str) -> int | None:
        """1 (a non-difficult object of ``cls``), 0 (only difficult ones), -1, or None when the
        XML is missing or unreadable."""
        if image_id not in self._cache:
            self._cache[image_id] = self._parse(image_id)
        present = self._cache[image_id]
        return None if present is None else present.get(cls, -1)

    def _parse(self, image_id: str) -> dict[str, int] | None:
        path = os.path.join(self._dir, f"{image_id}.xml")
        if not os.path.isfile(path):
            return None
        try:
            tree = ET.parse(path)
        except (ET.ParseError, OSError) as e:
            self._skipped.append((path, f"unreadable annotation: {e}"))
            return None
        present: dict[str, int] = {}
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            present[name] = max(present.get(name, 0), 0 if difficult else 1)
        return present
