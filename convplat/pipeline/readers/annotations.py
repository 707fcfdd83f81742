"""Labels and boxes beside the images: Kaggle ``LOC_*_solution.csv``, PASCAL-VOC XML, class-name
files and TF's val ground truth.

ImageNet's 1-based inclusive ``(xmin, ymin, xmax, ymax)`` becomes the 0-based, x2/y2-exclusive
:data:`~convplat.pipeline.readers.items.Corners` ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET

from convplat.pipeline.readers.items import ClassInfo, Corners, scan_dir

# Files that name ImageNet classes: "<wnid> <name>" per line (Kaggle, Caffe, full ImageNet).
_NAME_FILES = ("LOC_synset_mapping.txt", "synset_words.txt", "words.txt")
# TF Inception's val ground truth: line i holds the wnid of ILSVRC2012_val_{i:08d}.
TF_VAL_LABELS = "imagenet_2012_validation_synset_labels.txt"


def read_tf_val_labels(path: str) -> dict[str, str] | None:
    """TF Inception's val ground truth: line i is the wnid of ``ILSVRC2012_val_{i:08d}``."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        wnids = [line.strip() for line in f]
    return {f"ILSVRC2012_val_{i:08d}": w for i, w in enumerate(wnids, start=1) if w}


# LOC csv row: (class wnid = first token, ((wnid, box), ...)).
CsvRow = tuple[str, tuple[tuple[str, Corners], ...]]


def _to_box(xmin: float, ymin: float, xmax: float, ymax: float) -> Corners | None:
    """ImageNet/VOC 1-based inclusive corners -> 0-based, x2/y2 exclusive; None if empty."""
    x1, y1 = max(xmin - 1.0, 0.0), max(ymin - 1.0, 0.0)
    if xmax <= x1 or ymax <= y1:
        return None
    return (x1, y1, float(xmax), float(ymax))


def read_solution_csv(path: str, skipped: list[tuple[str, str]]) -> dict[str, CsvRow]:
    """Parse a Kaggle ``LOC_*_solution.csv`` once: ImageId -> (class wnid, boxes)."""
    rows: dict[str, CsvRow] = {}
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


def _parse_voc(path: str, skipped: list[tuple[str, str]]) -> tuple[tuple[str, Corners], ...]:
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
            entries = scan_dir(d)
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


class BoxSource:
    """Boxes per image stem: the LOC csv row when it has boxes, else the VOC XML file."""

    def __init__(
        self,
        classes: list[ClassInfo],
        csv_rows: dict[str, CsvRow],
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

    def lookup(self, stem: str) -> tuple[tuple[Corners, ...], tuple[int, ...]]:
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


def read_name_file(path: str) -> dict[str, str]:
    """``<wnid> <name>`` lines -> {wnid: name} (name defaults to the wnid)."""
    names: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts:
                names[parts[0]] = parts[1].strip() if len(parts) > 1 else parts[0]
    return names


def read_class_names(base: str) -> dict[str, str]:
    for name in _NAME_FILES:
        path = os.path.join(base, name)
        if os.path.isfile(path):
            return read_name_file(path)
    return {}
