"""Tests for the synthetic demo data (convplat/demo/)."""

from __future__ import annotations

import csv
import hashlib
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convplat.demo import (
    MAX_CLASSES,
    SHAPES,
    caltech_class_specs,
    draw_sample,
    imagenet_class_specs,
    make_demo_data,
)
from convplat.demo.drawing import IMAGENET_COLOURS
from convplat.errors import ConfigError

SMALL = dict(
    classes=3,
    train_per_class=4,
    val_per_class=2,
    caltech_classes=3,
    caltech_per_class=6,
    voc_classes=3,
    voc_train=6,
    voc_val=4,
)


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_voc(path: Path) -> tuple[str, tuple[int, int], list[tuple[str, int, int, int, int]]]:
    root = ET.parse(path).getroot()
    assert root.tag == "annotation"
    size = root.find("size")
    wh = (int(size.findtext("width")), int(size.findtext("height")))
    assert size.findtext("depth") == "3"
    boxes = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        coords = [int(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append((obj.findtext("name"), *coords))
    return root.findtext("filename"), wh, boxes


@pytest.fixture(scope="module")
def folder_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("folder")
    return out, make_demo_data(out, seed=1, layout="folder", **SMALL)


@pytest.fixture(scope="module")
def ilsvrc_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ilsvrc")
    return out, make_demo_data(out, seed=1, layout="ilsvrc", objects_per_image=3, **SMALL)


def test_class_specs_are_distinct_and_sorted():
    specs = imagenet_class_specs(MAX_CLASSES)
    wnids = [s.wnid for s in specs]
    assert all(re.fullmatch(r"n0\d{7}", w) for w in wnids)
    assert wnids == sorted(wnids) and len(set(wnids)) == len(wnids)
    assert len({(s.shape, s.colour) for s in specs}) == MAX_CLASSES
    ten = imagenet_class_specs(10)  # the default set differs in shape AND colour
    assert len({s.shape for s in ten}) == len({s.colour for s in ten}) == 10
    cal = caltech_class_specs(6)
    assert not {s.shape for s in cal} & {s.shape for s in specs}
    assert not {s.colour for s in cal} & set(IMAGENET_COLOURS.values())


def _nearest(rgb: np.ndarray, palette: dict) -> str:
    names = list(palette)
    ref = np.asarray([palette[n] for n in names], np.float32)
    return names[int(np.linalg.norm(ref - rgb, axis=1).argmin())]


def test_imagenet_images_carry_distractors_of_other_classes():
    """The class is in the labelled object alone: unboxed distractors of other classes (in
    their colours) sit outside its box, so which colours an image holds does not tell it."""
    specs = imagenet_class_specs(10)
    for k in (0, 1):
        own = _nearest(np.asarray(specs[k].colour, np.float32), IMAGENET_COLOURS)
        for s in range(20):
            img, (box,) = draw_sample(
                np.random.default_rng([k, s]), specs, k, 320, 240, clutter=False, distractors=3
            )
            pixels = np.asarray(img, np.float32)
            inside = pixels[box.ymin - 1 : box.ymax, box.xmin - 1 : box.xmax].reshape(-1, 3)
            drawn = inside[(inside != 128).any(axis=1)]
            assert _nearest(np.median(drawn, axis=0), IMAGENET_COLOURS) == own
            outside = (pixels != 128).any(axis=2)
            outside[box.ymin - 1 : box.ymax, box.xmin - 1 : box.xmax] = False
            assert outside.any()  # at least one distractor, outside the box
            assert _nearest(np.median(pixels[outside], axis=0), IMAGENET_COLOURS) != own


def test_backgrounds_do_not_depend_on_the_class(monkeypatch):
    """Backgrounds avoid every class colour alike (not just the colours in the image), so
    the colours a background lacks never tell the class."""
    from convplat.demo import drawing

    specs = imagenet_class_specs(10)
    seen: list[set] = []
    real = drawing.draw_background

    def spy(rng, width, height, avoid=(), clutter=True):
        seen.append({tuple(c) for c in avoid})
        return real(rng, width, height, avoid=avoid, clutter=clutter)

    monkeypatch.setattr(drawing, "draw_background", spy)
    for k in range(10):
        draw_sample(np.random.default_rng(k), specs, k, 160, 120, distractors=1)
    assert all(avoid >= {s.colour for s in specs} for avoid in seen) and len(seen) == 10


def test_folder_layout_tree(folder_set):
    out, summary = folder_set
    root = out / "imagenet"
    wnids = [s.wnid for s in imagenet_class_specs(3)]
    assert sorted(p.name for p in (root / "train").iterdir()) == wnids
    assert sorted(p.name for p in (root / "val").iterdir()) == wnids
    train = sorted((root / "train").rglob("*.JPEG"))
    val = sorted((root / "val").rglob("*.JPEG"))
    assert len(train) == 12 and len(val) == 6
    assert summary["imagenet"]["train"] == 12 and summary["imagenet"]["val"] == 6
    assert all(re.fullmatch(rf"{p.parent.name}_\d+\.JPEG", p.name) for p in train)
    assert sorted(p.name for p in val) == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
    for img_path in train + val:
        split, wnid = img_path.parent.parent.name, img_path.parent.name
        xml = root / "Annotations" / split / wnid / f"{img_path.stem}.xml"
        filename, (w, h), boxes = _read_voc(xml)
        assert filename == img_path.stem
        with Image.open(img_path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (w, h)
            im.load()
        assert 300 <= w <= 500 and 300 <= h <= 500
        assert len(boxes) == 1 and boxes[0][0] == wnid
        _, x0, y0, x1, y1 = boxes[0]
        assert 1 <= x0 < x1 <= w and 1 <= y0 < y1 <= h
        # Object diameter is 35-70% of the shorter side; the tight box is at most that.
        assert 0.15 * min(w, h) <= max(x1 - x0, y1 - y0) + 1 <= 0.7 * min(w, h) + 2
    sizes = {Image.open(p).size for p in train}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    assert not (out / "imagenet" / "LOC_synset_mapping.txt").exists()


def test_ilsvrc_layout_csv_matches_xml(ilsvrc_set):
    out, _ = ilsvrc_set
    root = out / "imagenet"
    specs = imagenet_class_specs(3)
    lines = (root / "LOC_synset_mapping.txt").read_text().splitlines()
    assert lines == [f"{s.wnid} {s.name}" for s in specs]
    assert [ln.split()[0] for ln in lines] == sorted(ln.split()[0] for ln in lines)
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    ann = root / "ILSVRC" / "Annotations" / "CLS-LOC"
    assert len(list((data / "train").rglob("*.JPEG"))) == 12
    val = sorted((data / "val").iterdir())  # flat
    assert [p.name for p in val] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
    n_multi = 0
    for split in ("train", "val"):
        with open(root / f"LOC_{split}_solution.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["ImageId", "PredictionString"]
        assert len(rows) == 1 + (12 if split == "train" else 6)
        for image_id, pred in rows[1:]:
            assert pred.endswith(" ")
            tok = pred.split()
            assert len(tok) % 5 == 0
            csv_boxes = [(tok[i], *map(int, tok[i + 1 : i + 5])) for i in range(0, len(tok), 5)]
            sub = f"{split}/{image_id.rsplit('_', 1)[0]}" if split == "train" else split
            _, (w, h), xml_boxes = _read_voc(ann / sub / f"{image_id}.xml")
            assert csv_boxes == xml_boxes
            with Image.open(data / sub / f"{image_id}.JPEG") as im:
                assert im.size == (w, h)
            if split == "train":
                assert csv_boxes[0][0] == image_id.split("_")[0]  # label = first object
            n_multi += len(csv_boxes) > 1
            for _, x0, y0, x1, y1 in csv_boxes:
                assert 1 <= x0 < x1 <= w and 1 <= y0 < y1 <= h
            for i, a in enumerate(csv_boxes):  # objects are placed without overlap
                for b in csv_boxes[i + 1 :]:
                    assert a[3] < b[1] or b[3] < a[1] or a[4] < b[2] or b[4] < a[2]
    assert n_multi > 0
    sets = root / "ILSVRC" / "ImageSets" / "CLS-LOC"
    assert len((sets / "train_cls.txt").read_text().splitlines()) == 12


def test_shapes_fit_the_unit_disc():
    # Objects are placed so that their disc lies inside the image: no shape may be clipped.
    for name, (outer, _) in SHAPES.items():
        r = max(np.hypot(*np.asarray(p).T).max() for p in outer)
        assert 0.99 <= r <= 1 + 1e-9, name


@pytest.mark.parametrize("shape_set", ["imagenet", "caltech"])
@pytest.mark.parametrize("seed", [0, 1])
def test_box_is_tight_around_object(shape_set, seed):
    specs = imagenet_class_specs(12) if shape_set == "imagenet" else caltech_class_specs(8)
    for k in range(len(specs)):
        rng = np.random.default_rng([seed, k])
        img, boxes = draw_sample(rng, specs, k, 320, 240, clutter=False)
        assert img.size == (320, 240) and len(boxes) == 1
        b = boxes[0]
        assert b.label == k
        fg = (np.asarray(img, np.int16) != 128).any(axis=2)
        inside = np.zeros_like(fg)
        inside[b.ymin - 1 : b.ymax, b.xmin - 1 : b.xmax] = True
        assert not fg[~inside].any()  # nothing drawn outside the box
        box_fg = fg[b.ymin - 1 : b.ymax, b.xmin - 1 : b.xmax]
        # Tight: every edge row/column of the box touches the object ...
        assert box_fg[0].any() and box_fg[-1].any() and box_fg[:, 0].any() and box_fg[:, -1].any()
        # ... and the object covers a good part of its box.
        assert box_fg.mean() > 0.25, specs[k].name


def test_multi_object_sample_boxes():
    specs = imagenet_class_specs(5)
    counts = []
    for s in range(10):
        img, boxes = draw_sample(np.random.default_rng(s), specs, 2, 400, 400, objects=4)
        counts.append(len(boxes))
        assert boxes[0].label == 2
        area = [(b.xmax - b.xmin) * (b.ymax - b.ymin) for b in boxes]
        assert area[0] == max(area)
    assert max(counts) > 1 and max(counts) <= 4


def test_same_seed_same_bytes_other_seed_differs(tmp_path, folder_set):
    out, _ = folder_set
    # "imagefolder" (prepare's name for the layout) and its alias "folder" write the same tree.
    again = make_demo_data(tmp_path / "a", seed=1, layout="imagefolder", **SMALL)
    assert again["imagenet"]["train"] == 12 and again["imagenet"]["layout"] == "imagefolder"
    first = _tree_hash(out)
    assert first == _tree_hash(tmp_path / "a")
    make_demo_data(tmp_path / "b", seed=2, layout="folder", **SMALL)
    other = _tree_hash(tmp_path / "b")
    common = set(first) & set(other)
    jpegs = [k for k in common if k.endswith((".JPEG", ".jpg"))]
    assert jpegs and all(first[k] != other[k] for k in jpegs)


def test_caltech_set(folder_set):
    out, summary = folder_set
    cats = out / "caltech101" / "101_ObjectCategories"
    names = [s.wnid for s in caltech_class_specs(3)]
    assert sorted(p.name for p in cats.iterdir()) == sorted(names + ["BACKGROUND_Google"])
    assert (cats / "BACKGROUND_Google" / "tmp").is_file()
    counts, modes = [], []
    for name in names:
        files = sorted((cats / name).iterdir())
        counts.append(len(files))
        assert [p.name for p in files] == [f"image_{i:04d}.jpg" for i in range(1, len(files) + 1)]
        for p in files:
            with Image.open(p) as im:
                assert im.format == "JPEG"
                modes.append(im.mode)
                w, h = im.size
                assert 180 <= min(w, h) and max(w, h) <= 350
    assert len(set(counts)) > 1  # uneven, like the real set
    assert sum(counts) == summary["caltech101"]["images"]
    assert "L" in modes and "RGB" in modes
    bg = [p for p in (cats / "BACKGROUND_Google").iterdir() if p.suffix == ".jpg"]
    assert len(bg) == summary["caltech101"]["background"] >= 2


def test_rerun_replaces_own_output_but_refuses_foreign_dirs(tmp_path):
    args = dict(classes=2, train_per_class=1, val_per_class=1, caltech_classes=2, voc=False)
    make_demo_data(tmp_path, layout="ilsvrc", caltech_per_class=2, progress=True, **args)
    make_demo_data(tmp_path, layout="folder", caltech_per_class=2, **args)
    assert not (tmp_path / "imagenet" / "ILSVRC").exists()  # the stale layout is gone
    # Files a user adds to a tree demo-data wrote survive a re-run; only its own stale files go.
    (tmp_path / "imagenet" / "notes.txt").write_text("mine")
    (tmp_path / "imagenet" / "train" / "extra").mkdir()
    (tmp_path / "imagenet" / "train" / "extra" / "photo.jpg").write_bytes(b"mine too")
    make_demo_data(tmp_path, layout="ilsvrc", caltech_per_class=2, **args)
    assert (tmp_path / "imagenet" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "imagenet" / "train" / "extra" / "photo.jpg").read_bytes() == b"mine too"
    assert not list((tmp_path / "imagenet" / "train").rglob("*.JPEG"))
    assert list((tmp_path / "imagenet" / "ILSVRC").rglob("*.JPEG"))
    foreign = tmp_path / "other" / "imagenet"
    foreign.mkdir(parents=True)
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="did not write"):
        make_demo_data(tmp_path / "other", caltech_per_class=2, **args)
    assert (foreign / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"classes": 1},
        {"classes": MAX_CLASSES + 1},
        {"classes": "10"},
        {"layout": "coco"},
        {"objects_per_image": 0},
        {"distractors": -1},
        {"train_per_class": 0},
        {"val_per_class": -1},
        {"caltech_classes": 1},
        {"seed": -1},
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        make_demo_data(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # validated before anything is written


@pytest.mark.parametrize("where", ["a-file", "a-file/below", "x" * 300, "/proc/convplat-demo"])
def test_an_out_that_cannot_be_written_is_a_config_error(tmp_path, where):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(ConfigError, match=r"--out .*: cannot write there"):
        make_demo_data(tmp_path / where, classes=2, voc=False)


def test_default_generation_time(tmp_path, capsys):
    # Measured, not asserted: the budget is < 30 s on one core, but test machines are shared.
    cpu = time.process_time()
    summary = make_demo_data(tmp_path)
    cpu = time.process_time() - cpu
    assert summary["imagenet"]["train"] == 1000 and summary["imagenet"]["val"] == 200
    with capsys.disabled():
        print(f"\ndemo-data default set: {summary['seconds']:.1f} s wall, {cpu:.1f} s CPU")


def test_voc_tree(folder_set):
    out, summary = folder_set
    base = out / "VOCdevkit" / "VOC2012"
    assert summary["voc2012"] == {
        "path": str(base),
        "classes": 3,
        "train": 6,
        "val": 4,
        "objects": summary["voc2012"]["objects"],
        "difficult": summary["voc2012"]["difficult"],
    }
    jpegs = sorted((base / "JPEGImages").iterdir())
    assert [p.stem for p in jpegs] == [f"2012_{i:06d}" for i in range(1, 11)]
    main = base / "ImageSets" / "Main"
    train = (main / "train.txt").read_text().split()
    val = (main / "val.txt").read_text().split()
    assert len(train) == 6 and len(val) == 4 and not set(train) & set(val)
    assert sorted(train + val) == (main / "trainval.txt").read_text().split()
    objects = 0
    for p in jpegs:
        filename, (w, h), boxes = _read_voc(base / "Annotations" / f"{p.stem}.xml")
        assert filename == p.name and Image.open(p).size == (w, h) and max(w, h) == 500
        assert all(name in ("aeroplane", "bicycle", "bird") for name, *_ in boxes)
        objects += len(boxes)
    assert objects == summary["voc2012"]["objects"] >= 10
    lines = (main / "bird_val.txt").read_text().splitlines()
    assert all(re.fullmatch(r"2012_\d{6} (-1| 0| 1)", line) for line in lines)


def test_distractors_only_where_one_object_is_labelled(folder_set, ilsvrc_set):
    """One object per image: up to 3 unboxed distractors by default; several boxed objects
    (detection): none, since a detector would be taught and scored on unboxed objects."""
    import json

    from convplat.demo.datasets import MARKER

    def recorded(out: Path) -> int:
        return json.loads((out / "imagenet" / MARKER).read_text())["distractors"]

    assert recorded(folder_set[0]) == 3
    assert recorded(ilsvrc_set[0]) == 0


def test_an_out_inside_a_dataset_is_refused(tmp_path):
    args = dict(classes=2, train_per_class=1, val_per_class=1, caltech_per_class=1, voc=False)
    make_demo_data(tmp_path / "data", **args)
    mine = tmp_path / "mine"
    (mine / "train" / "n01440764").mkdir(parents=True)
    (mine / "val").mkdir()
    inside = [
        (tmp_path / "data" / "imagenet" / "train", "a dataset demo-data wrote"),
        (tmp_path / "data" / "imagenet", "a dataset demo-data wrote"),
        (mine / "train", "class folders such as n01440764"),
        (mine / "val", "a split of a dataset"),
    ]
    for out, why in inside:
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        with pytest.raises(ConfigError, match=why):  # before: imagenet/, caltech101/ added there
            make_demo_data(out, **args)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, out
    make_demo_data(tmp_path / "data", **args)  # a re-run in the same place is still fine
