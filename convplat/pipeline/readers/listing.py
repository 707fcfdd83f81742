"""`read_dataset`: list an ImageNet, Caltech or folder-of-class-folders tree into items.

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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from convplat.errors import DatasetError
from convplat.pipeline.readers.annotations import (
    TF_VAL_LABELS,
    BoxSource,
    CsvRow,
    read_class_names,
    read_name_file,
    read_solution_csv,
    read_tf_val_labels,
)
from convplat.pipeline.readers.items import (
    ANNOTATION_DIRS,
    DEMO_HINT,
    IMAGE_EXTENSIONS,
    KEY_FORMS,
    SPLIT_DIRS,
    SPLIT_ORDER,
    ClassInfo,
    DatasetListing,
    Item,
    Record,
    assign_keys,
    check_root,
    is_image_name,
    key_form,
    scan_dir,
    split_entries,
)
from convplat.pipeline.readers.layout import (
    CALTECH101_BACKGROUND,
    CALTECH256_DIR,
    EXPECTED,
    LAYOUTS,
    ilsvrc_dirs,
    locate,
    locate_forced,
)
from convplat.pipeline.readers.records import RUN_RECORDS, RecordSink


@dataclass
class DatasetStream:
    """What a reader found, with the items streamed rather than held: classes, what it
    skipped, and the listed files in a :class:`RecordSink` (sorted runs on disk past
    ``run_size`` files). :meth:`items` yields the same items, in the same order, as
    :func:`read_dataset`'s list. Close it (or use it as a context manager) to remove the runs.
    """

    root: str
    layout: str
    classes: list[ClassInfo]
    records: RecordSink
    skipped: list[tuple[str, str]] = field(default_factory=list)
    boxes: BoxSource | None = None

    def split_counts(self) -> dict[str, int]:
        """Items per split, in train, val, test order."""
        counts = self.records.counts
        return {s: counts[s] for s in sorted(counts, key=lambda s: (SPLIT_ORDER.get(s, 9), s))}

    def items(self) -> Iterator[Item]:
        """Every item, sorted by (split, path), keyed and with its boxes. Iterate once: box
        files that cannot be read are added to ``skipped`` as they are met."""
        form = key_form(self.records.unordered, len(self.records))
        if form is None:  # clashing names get numbered in sorted order: the one in-memory case
            records = list(self.records.sorted())
            pairs: Iterable[tuple[Record, str]] = zip(records, assign_keys(records), strict=True)
        else:
            make_key = KEY_FORMS[form]
            pairs = ((r, make_key(r)) for r in self.records.sorted())
        boxes = self.boxes
        for (split, path, label, _, stem), key in pairs:
            if boxes is None:
                yield Item(path, split, label, key)
            else:
                yield Item(path, split, label, key, *boxes.lookup(stem))

    def close(self) -> None:
        self.records.close()

    def __enter__(self) -> DatasetStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    with stream_dataset(root, layout, include_background=include_background, run_size=None) as s:
        items = list(s.items())
        return DatasetListing(s.root, s.layout, s.classes, items, s.skipped)


def stream_dataset(
    root: str | os.PathLike,
    layout: str = "auto",
    *,
    include_background: bool = False,
    run_size: int | None = RUN_RECORDS,
) -> DatasetStream:
    """:func:`read_dataset` for a dataset too big to hold: the files are listed into sorted
    runs of ``run_size`` on disk (None: in memory) and :meth:`DatasetStream.items` streams
    them. Arguments and errors as :func:`read_dataset`."""
    if layout != "auto" and layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
    top = check_root(root)
    if layout == "auto":
        layout, base = locate(top)
    else:
        base = locate_forced(top, layout)

    skipped: list[tuple[str, str]] = []
    boxes: BoxSource | None = None
    records = RecordSink(run_size)
    try:
        if layout == "ilsvrc":
            classes, boxes = _read_ilsvrc(base, skipped, records)
        elif layout == "imagefolder":
            classes, boxes = _read_imagefolder(base, skipped, records)
        elif layout in ("caltech101", "caltech256"):
            classes = _read_caltech(base, layout, include_background, skipped, records)
        else:
            classes = _read_folder(base, skipped, records)
    except BaseException:
        records.close()
        raise

    if not len(records):
        records.close()
        example = (
            f"; skipped {len(skipped)} entries, e.g. {skipped[0][0]}: {skipped[0][1]}"
            if skipped
            else ""
        )
        raise DatasetError(
            f"no images found under {top} (layout {layout}): expected {EXPECTED[layout]}"
            f"{example}; check the path or {DEMO_HINT}"
        )
    return DatasetStream(top, layout, classes, records, skipped, boxes)


# --- listing ------------------------------------------------------------------------------------


def _list_class_dir(
    class_dir: str,
    split: str,
    label: int,
    records: RecordSink,
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
    records: RecordSink,
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
    records: RecordSink,
    other_dirs_ok: Iterable[str] = (),
) -> list[str]:
    """List ``{train,val,test}/<class>/`` folders into ``records``; flat val files are labelled
    by ``flat_labels``.

    Returns the sorted class names (class folders plus the wnids labelling flat val files).
    Folders beside the splits, other than ``other_dirs_ok``, are recorded as skipped.
    """
    splits = []
    for e in scan_dir(base):
        if not e.is_dir():
            continue
        split = SPLIT_DIRS.get(e.name)
        if split is None:
            if e.name not in other_dirs_ok:
                skipped.append((e.path, "not a split directory"))
            continue
        dirs, files = split_entries(scan_dir(e.path))
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

    for split, _, dirs, files in splits:
        for d in dirs:
            _list_class_dir(d.path, split, index[d.name], records, skipped)
        if split == "val" and flat_labels is not None:
            labels = {s: index[w] for s, w in flat_labels.items() if w in index}
            _list_flat_files(files, split, labels, "no label", records, skipped)
        else:  # an unlabelled flat val folder, or images outside any class folder
            reason = "no label" if split == "val" else "no class"
            _list_flat_files(files, split, None, reason, records, skipped)
    return classes


def _read_imagefolder(
    base: str, skipped: list[tuple[str, str]], records: RecordSink
) -> tuple[list[ClassInfo], BoxSource]:
    csv_rows: dict[str, CsvRow] = {}
    flat_labels: dict[str, str] | None = None
    for split in ("train", "val"):
        path = os.path.join(base, f"LOC_{split}_solution.csv")
        if os.path.isfile(path):
            rows = read_solution_csv(path, skipped)
            csv_rows.update(rows)
            if split == "val":
                flat_labels = {stem: row[0] for stem, row in rows.items()}
    if flat_labels is None:
        flat_labels = read_tf_val_labels(os.path.join(base, TF_VAL_LABELS))
    wnids = _read_split_folders(base, skipped, flat_labels, records, ANNOTATION_DIRS)
    names = read_class_names(base)
    classes = [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)]
    xml_roots = [os.path.join(base, "Annotations"), os.path.join(base, "bbox")]
    return classes, BoxSource(classes, csv_rows, xml_roots, skipped)


def _read_ilsvrc(
    base: str, skipped: list[tuple[str, str]], records: RecordSink
) -> tuple[list[ClassInfo], BoxSource]:
    csv_dir, data = ilsvrc_dirs(base)
    if data is None:
        raise DatasetError(
            f"{base} is not an ILSVRC (Kaggle) tree: expected {EXPECTED['ilsvrc']}; "
            "pass the folder that holds ILSVRC/ and the LOC_* files, or another --layout"
        )
    j = os.path.join
    mapping = j(csv_dir, "LOC_synset_mapping.txt")
    names = read_name_file(mapping) if os.path.isfile(mapping) else {}
    csv_rows: dict[str, CsvRow] = {}
    val_rows: dict[str, CsvRow] = {}
    for split in ("train", "val"):
        path = j(csv_dir, f"LOC_{split}_solution.csv")
        if os.path.isfile(path):
            rows = read_solution_csv(path, skipped)
            csv_rows.update(rows)
            if split == "val":
                val_rows = rows

    train, val = j(data, "train"), j(data, "val")
    train_dirs, train_files = split_entries(scan_dir(train)) if os.path.isdir(train) else ([], [])
    val_dirs, val_files = split_entries(scan_dir(val)) if os.path.isdir(val) else ([], [])
    if os.path.isdir(j(data, "test")):
        skipped.append((j(data, "test"), "no labels (unlabelled test split)"))

    # Class order is sorted wnid order (DESIGN.md); for the real mapping file it equals file order.
    if names:
        wnids = sorted(names)
    else:
        wnids = sorted({d.name for d in train_dirs + val_dirs} or {r[0] for r in val_rows.values()})
    classes = [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)]
    index = {w: i for i, w in enumerate(wnids)}

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
    return classes, BoxSource(classes, csv_rows, [xml_root], skipped)


def _read_caltech(
    base: str,
    layout: str,
    include_background: bool,
    skipped: list[tuple[str, str]],
    records: RecordSink,
) -> list[ClassInfo]:
    dirs, files = split_entries(scan_dir(base))
    for f in files:
        skipped.append((f.path, "no class"))
    if not include_background:
        dirs = [d for d in dirs if not _is_background(layout, d.name)]
    classes = []
    for i, d in enumerate(dirs):
        if layout == "caltech256" and (m := CALTECH256_DIR.fullmatch(d.name)):
            name = m.group(2)  # 201.starfish-101 -> starfish-101
        else:
            name = d.name
        classes.append(ClassInfo(i, d.name, name))
        # The transfer protocol draws its own train/test splits (ZFNet §5.2).
        _list_class_dir(d.path, "train", i, records, skipped)
    return classes


def _is_background(layout: str, name: str) -> bool:
    if layout == "caltech101":
        return name == CALTECH101_BACKGROUND
    m = CALTECH256_DIR.fullmatch(name)
    return m is not None and m.group(2) == "clutter"


def _read_folder(base: str, skipped: list[tuple[str, str]], records: RecordSink) -> list[ClassInfo]:
    if os.path.isdir(os.path.join(base, "train")):
        wnids = _read_split_folders(base, skipped, None, records)
    else:
        dirs, files = split_entries(scan_dir(base))
        for f in files:  # README, csvs... at the root are fine; images there have no class
            if is_image_name(f.name):
                skipped.append((f.path, "no class"))
        wnids = [d.name for d in dirs]
        for i, d in enumerate(dirs):
            _list_class_dir(d.path, "train", i, records, skipped)
    return [ClassInfo(i, w, w) for i, w in enumerate(wnids)]
