"""What a reader returns (classes, items, listings) and the helpers every reader shares:
checking the root, scanning folders without a per-file ``stat``, and webdataset-safe keys.

Boxes are ``(x1, y1, x2, y2)`` in original pixels, 0-based, x2/y2 exclusive (:data:`Corners`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from convplat.errors import DatasetError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# One box of an Item: (x1, y1, x2, y2) in original pixels, 0-based, x2/y2 exclusive. (The demo
# data's LabelledBox is another thing: a class label plus ImageNet's 1-based inclusive corners.)
Corners = tuple[float, float, float, float]

# Split folder names and the split they stand for; anything else beside them is not a split.
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Only look one level down for a wrapped dataset (e.g. caltech-101/101_ObjectCategories) when
# the root has this few sub-folders, so detection stays O(1) on a 1000-class folder.
MAX_WRAPPER_CHILDREN = 8
ANNOTATION_DIRS = frozenset({"Annotations", "bbox", "ImageSets"})

EXPECTED_ANY = (
    "train/<wnid>/*.JPEG, ILSVRC/Data/CLS-LOC/..., 101_ObjectCategories/, 256_ObjectCategories/ "
    "or folders of class folders"
)
DEMO_HINT = "run `convplat demo-data` to make a synthetic set"


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
    boxes: tuple[Corners, ...] = ()
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
        return {s: counts[s] for s in sorted(counts, key=lambda s: (SPLIT_ORDER.get(s, 9), s))}


# A listed file before keys and boxes are attached: (split, path, label, group, stem); the
# group (class folder, or split for flat folders) disambiguates repeated stems in keys.
Record = tuple[str, str, int, str, str]


# --- scanning ------------------------------------------------------------------------------------


def check_root(root: str | os.PathLike) -> str:
    """``root`` as an absolute path to an existing directory, else a DatasetError."""
    path = os.path.abspath(os.fspath(root))
    if not os.path.exists(path):
        raise DatasetError(
            f"dataset directory {path} does not exist: expected {EXPECTED_ANY}; "
            f"pass the right path or {DEMO_HINT}"
        )
    if not os.path.isdir(path):
        raise DatasetError(f"dataset path {path} is not a directory: expected {EXPECTED_ANY}")
    return path


def subdir_names(d: str) -> list[str]:
    """Sorted names of the non-hidden sub-directories of ``d``."""
    try:
        with os.scandir(d) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    except OSError:
        return []


def scan_dir(d: str) -> list[os.DirEntry]:
    """Non-hidden entries of ``d``, sorted by name (hidden files are ignored silently)."""
    with os.scandir(d) as it:
        entries = [e for e in it if not e.name.startswith(".")]
    entries.sort(key=lambda e: e.name)
    return entries


def split_entries(entries: Iterable[os.DirEntry]) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    dirs, files = [], []
    for e in entries:
        (dirs if e.is_dir() else files).append(e)
    return dirs, files


def display_path(path: str) -> str:
    """``path`` as valid UTF-8 text for outputs (JSON, Parquet): a name that is not UTF-8 on
    disk (``os.fsdecode`` keeps its bytes as surrogates) shows those bytes as ``\\xNN``."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    return path


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# --- keys ---------------------------------------------------------------------------------------


def _safe_key(text: str) -> str:
    return _KEY_UNSAFE.sub("_", text) or "_"


# The key shapes assign_keys tries in turn: the file stem, ``<class>_<stem>``,
# ``<split>_<class>_<stem>``.
KEY_FORMS: tuple[Callable[[Record], str], ...] = (
    lambda r: _safe_key(r[4]),
    lambda r: _safe_key(f"{r[3]}_{r[4]}"),
    lambda r: _safe_key(f"{r[0]}_{r[3]}_{r[4]}"),
)


def key_form(records: Callable[[], Iterable[Record]], count: int) -> int | None:
    """The index in KEY_FORMS of the shape :func:`assign_keys` would choose, from passes over
    ``records()`` (any order, ``count`` records) that hold 8 bytes a record, not the keys;
    None when no shape is unique (assign_keys then numbers the clashes, in sorted order)."""
    for index, form in enumerate(KEY_FORMS):
        if _distinct(lambda form=form: (form(r) for r in records()), count):
            return index
    return None


def _distinct(keys: Callable[[], Iterator[str]], count: int) -> bool:
    """Whether the strings ``keys()`` yields are all different: their hashes are sorted and
    compared; strings whose hashes collide are compared in a second pass."""
    hashes = np.fromiter((hash(k) for k in keys()), dtype=np.int64, count=count)
    hashes.sort()
    same = hashes[1:][hashes[1:] == hashes[:-1]]
    if not same.size:
        return True
    suspects, seen = set(same.tolist()), set()
    for k in keys():
        if hash(k) in suspects:
            if k in seen:
                return False
            seen.add(k)
    return True


def assign_keys(records: list[Record]) -> list[str]:
    """Unique webdataset-safe keys, of one shape across the dataset where possible.

    The file stem if stems are unique (ImageNet, Caltech-256); else ``<class>_<stem>`` for every
    item (Caltech-101 repeats ``image_0001`` in each class); else ``<split>_<class>_<stem>`` if
    that is unique; else ``<class>_<stem>`` with ``-2``, ``-3``... on the clashes (``1.jpg``
    beside ``1.png``). webdataset splits a sample's files at the first '.' of the basename, so
    keys hold only ``[A-Za-z0-9_-]``.
    """
    stem, group, split = KEY_FORMS
    keys = [stem(r) for r in records]
    if len(set(keys)) == len(keys):
        return keys
    keys = [group(r) for r in records]
    taken = set(keys)
    if len(taken) == len(keys):
        return keys
    wide = [split(r) for r in records]
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
