"""PASCAL VOC 2012 classification listings (ZFNet Table 6): ``read_voc``.

``VOCdevkit/VOC2012/JPEGImages``, ``ImageSets/Main/{train,val}.txt`` and
``<class>_{train,val}.txt``, with ``Annotations/*.xml`` where a class file lacks an image.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

from convplat.errors import DatasetError
from convplat.pipeline.readers.items import (
    MAX_WRAPPER_CHILDREN,
    ClassInfo,
    DatasetListing,
    Item,
    Record,
    assign_keys,
    check_root,
    subdir_names,
)

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
    top = check_root(root)
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
    records: list[Record] = []
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
    keys = assign_keys(records)
    items = [Item(r[1], r[0], r[2], k) for r, k in zip(records, keys, strict=True)]
    classes = [ClassInfo(i, c, c) for i, c in enumerate(VOC_CLASSES)]
    return VocListing(
        top, "voc2012", classes, items, skipped, [targets[(r[0], r[1])] for r in records]
    )


def _locate_voc(top: str) -> str:
    """The folder holding ``JPEGImages``: ``top``, ``top/VOC2012`` or ``top/VOCdevkit/VOC2012``."""
    j = os.path.join
    candidates = [top, j(top, "VOC2012"), j(top, "VOCdevkit", "VOC2012")]
    subdirs = subdir_names(top)
    if len(subdirs) <= MAX_WRAPPER_CHILDREN:
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
