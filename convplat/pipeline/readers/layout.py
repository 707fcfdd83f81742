"""Which layout a raw dataset tree has, and the folder its reader starts from.

Detection looks at folder names only (never lists a class folder's files), at the root and, for
a root with few sub-folders, one wrapper level down (e.g. ``caltech-101/101_ObjectCategories``).
"""

from __future__ import annotations

import os
import re

from convplat.errors import DatasetError
from convplat.pipeline.readers.items import (
    ANNOTATION_DIRS,
    DEMO_HINT,
    EXPECTED_ANY,
    MAX_WRAPPER_CHILDREN,
    SPLIT_DIRS,
    check_root,
    subdir_names,
)

LAYOUTS = ("imagefolder", "ilsvrc", "caltech101", "caltech256", "folder")
# What each layout looks like, for the error that says it was not found.
EXPECTED = {
    "imagefolder": "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    "ilsvrc": "ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/} beside LOC_synset_mapping.txt and "
    "LOC_val_solution.csv",
    "caltech101": "101_ObjectCategories/<class>/image_NNNN.jpg",
    "caltech256": "256_ObjectCategories/NNN.name/NNN_MMMM.jpg",
    "folder": "<class>/*.jpg or train/<class>/*.jpg",
}
_WNID = re.compile(r"n\d{8}")
CALTECH256_DIR = re.compile(r"(\d{3})\.(.+)")
CALTECH101_BACKGROUND = "BACKGROUND_Google"
_LOC_FILES = ("LOC_synset_mapping.txt", "LOC_val_solution.csv", "LOC_train_solution.csv")


def detect_layout(root: str | os.PathLike) -> str:
    """Name the layout of the dataset under ``root`` (one of ``LAYOUTS``).

    Raises:
        DatasetError: ``root`` is missing or holds nothing we recognise.
    """
    return locate(check_root(root))[0]


def locate(root: str) -> tuple[str, str]:
    """(layout, base directory for its reader), trying the root, then one wrapper level down."""
    subdirs = subdir_names(root)
    found = _match_specific(root, subdirs)
    if found:
        return found
    if len(subdirs) <= MAX_WRAPPER_CHILDREN:
        for name in subdirs:
            if name in ANNOTATION_DIRS:  # Annotations/train/<wnid>/ is not an image tree
                continue
            child = os.path.join(root, name)
            found = _match_specific(child, subdir_names(child))
            if found:
                return found
    if _has_loc_files(root):  # csvs without ILSVRC/Data: the ilsvrc reader says what is missing
        return "ilsvrc", root
    if subdirs:
        return "folder", root
    raise DatasetError(
        f"cannot recognise a dataset layout in {root}: expected {EXPECTED_ANY}; "
        f"pass --layout or {DEMO_HINT}"
    )


def _match_specific(d: str, subdirs: list[str]) -> tuple[str, str] | None:
    if ilsvrc_dirs(d)[1] is not None:
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


def locate_forced(root: str, layout: str) -> str:
    """The base directory for a layout the user named; falls back to the root itself."""
    if layout == "folder":
        return root
    subdirs = subdir_names(root)
    candidates = [(root, subdirs)]
    if len(subdirs) <= MAX_WRAPPER_CHILDREN:
        for name in subdirs:
            if name not in ANNOTATION_DIRS:
                child = os.path.join(root, name)
                candidates.append((child, subdir_names(child)))
    for d, names in candidates:
        if layout == "ilsvrc" and ilsvrc_dirs(d)[1] is not None:
            return d
        if layout == "caltech101" and (base := _match_caltech101(d, names)):
            return base
        if layout == "caltech256" and (base := _match_caltech256(d, names)):
            return base
        if layout == "imagefolder" and _looks_imagefolder(d, names):
            return d
    if layout == "imagefolder" and not any(n in SPLIT_DIRS for n in subdirs):
        raise DatasetError(
            f"{root} is not an ImageFolder tree: expected {EXPECTED['imagefolder']}; "
            "pass the folder that holds train/ and val/, or another --layout"
        )
    # ilsvrc: its reader explains what is missing; caltech: the root is the category folder.
    return root


def _has_loc_files(d: str) -> bool:
    return any(os.path.isfile(os.path.join(d, name)) for name in _LOC_FILES)


def ilsvrc_dirs(d: str) -> tuple[str, str | None]:
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
    if os.path.basename(d) == "101_ObjectCategories" or CALTECH101_BACKGROUND in subdirs:
        return d
    if "101_ObjectCategories" in subdirs:
        return os.path.join(d, "101_ObjectCategories")
    return None


def _match_caltech256(d: str, subdirs: list[str]) -> str | None:
    if os.path.basename(d) == "256_ObjectCategories":
        return d
    if "256_ObjectCategories" in subdirs:
        return os.path.join(d, "256_ObjectCategories")
    numbered = sum(1 for n in subdirs if CALTECH256_DIR.fullmatch(n))
    if subdirs and 2 * numbered > len(subdirs):
        return d
    return None


def _looks_imagefolder(d: str, subdirs: list[str]) -> bool:
    """A train/ (or val/) whose sub-folders are mostly ImageNet wnids."""
    for split in ("train", "val"):
        if split in subdirs:
            names = subdir_names(os.path.join(d, split))
            if names and 2 * sum(1 for n in names if _WNID.fullmatch(n)) > len(names):
                return True
    return False
