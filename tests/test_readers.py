"""Readers list raw trees into items: every layout, its quirks, keys, boxes and errors."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest

from convplat.errors import DatasetError
from convplat.pipeline.readers import (
    LAYOUTS,
    ClassInfo,
    DatasetListing,
    Item,
    detect_layout,
    read_dataset,
)

# Readers never decode, so dummy bytes stand in for images.
JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"
KEY = re.compile(r"[A-Za-z0-9_-]+")
W1, W2, W3 = "n01440764", "n01443537", "n01484850"


def touch(path: Path, data: bytes | str = JPEG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def voc(*objects: tuple[str, int, int, int, int]) -> str:
    """A PASCAL-VOC annotation; boxes are ImageNet's 1-based inclusive corners."""
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    return f"<annotation><size><width>500</width><height>375</height></size>{objs}</annotation>"


def by_name(listing: DatasetListing) -> dict[str, Item]:
    return {Path(it.path).name: it for it in listing.items}


def skipped_names(listing: DatasetListing) -> dict[str, str]:
    return {Path(p).name: reason for p, reason in listing.skipped}


def check_invariants(listing: DatasetListing) -> None:
    keys = [it.key for it in listing.items]
    assert len(set(keys)) == len(keys)
    assert all(KEY.fullmatch(k) for k in keys)
    assert listing.items == sorted(listing.items, key=lambda it: (it.split, it.path))
    assert [c.index for c in listing.classes] == list(range(len(listing.classes)))
    assert all(0 <= it.label < len(listing.classes) for it in listing.items)
    assert all(os.path.isabs(it.path) and os.path.isfile(it.path) for it in listing.items)
    assert all(len(it.boxes) == len(it.box_labels) for it in listing.items)
    assert sum(listing.split_counts().values()) == len(listing.items)


# --- trees --------------------------------------------------------------------------------------


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet"
    touch(root / "train" / W1 / f"{W1}_1.JPEG")
    touch(root / "train" / W1 / f"{W1}_22.JPEG")
    touch(root / "train" / W2 / f"{W2}_5.JPEG")
    touch(root / "train" / W2 / "notes.txt", "stray")
    touch(root / "train" / W2 / ".DS_Store", "hidden")
    touch(root / "train" / W2 / "extra" / f"{W2}_9.JPEG")
    touch(root / "val" / W1 / "ILSVRC2012_val_00000002.JPEG")
    touch(root / "val" / W2 / "ILSVRC2012_val_00000001.JPEG")
    # Two objects, one of an unknown class (dropped); 1-based inclusive -> 0-based exclusive.
    touch(
        root / "Annotations" / "train" / W1 / f"{W1}_1.xml",
        voc((W1, 1, 1, 10, 20), ("n99999999", 5, 5, 9, 9)),
    )
    touch(
        root / "bbox" / "val" / "ILSVRC2012_val_00000001.xml",
        voc((W2, 11, 21, 100, 200), (W1, 2, 3, 4, 5)),
    )
    touch(root / "Annotations" / f"{W2}_5.xml", "<annotation><object>")  # unreadable
    return root


@pytest.fixture
def ilsvrc(tmp_path: Path) -> Path:
    root = tmp_path / "imagenet-object-localization-challenge"
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    touch(
        root / "LOC_synset_mapping.txt",
        f"{W1} tench, Tinca tinca\n{W2} goldfish, Carassius auratus\n{W3} great white shark\n",
    )
    touch(data / "train" / W1 / f"{W1}_10026.JPEG")
    touch(data / "train" / W1 / f"{W1}_7.JPEG")
    touch(data / "train" / W2 / f"{W2}_7.JPEG")  # no csv row: boxes from the XML fallback
    touch(data / "train" / "n09999999" / "n09999999_1.JPEG")  # not in the mapping
    for i in (1, 2, 3):
        touch(data / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    touch(data / "test" / "ILSVRC2012_test_00000001.JPEG")
    touch(
        root / "LOC_train_solution.csv",
        f"ImageId,PredictionString\n{W1}_10026,{W1} 1 1 10 20 {W1} 31 41 60 70 \n",
    )
    touch(
        root / "LOC_val_solution.csv",
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{W3} 156 48 272 332 {W1} 1 2 3 4 \n"
        f"ILSVRC2012_val_00000002,{W2} 5 6 7 8 \n"
        "ILSVRC2012_val_00000099,n01 2 3\n",  # malformed: skipped, never fatal
    )
    ann = root / "ILSVRC" / "Annotations" / "CLS-LOC"
    touch(ann / "train" / W2 / f"{W2}_7.xml", voc((W2, 3, 4, 50, 60)))
    touch(ann / "train" / W1 / f"{W1}_10026.xml", voc((W1, 100, 100, 200, 200)))  # csv wins
    return root


@pytest.fixture
def caltech101(tmp_path: Path) -> Path:
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for cls, n in (("BACKGROUND_Google", 2), ("Faces", 2), ("Faces_easy", 2), ("accordion", 3)):
        for j in range(1, n + 1):
            touch(cats / cls / f"image_{j:04d}.jpg")
    touch(cats / "BACKGROUND_Google" / "tmp", "not an image\n")
    return tmp_path / "caltech101"


@pytest.fixture
def caltech256(tmp_path: Path) -> Path:
    cats = tmp_path / "caltech256" / "256_ObjectCategories"
    touch(cats / "001.ak47" / "001_0001.jpg")
    touch(cats / "056.dog" / "056_0001.jpg")
    touch(cats / "056.dog" / "greg" / "056_0099.jpg")
    touch(cats / "198.spider" / "198_0001.jpg")
    touch(cats / "198.spider" / "RENAME2", "rename me")
    touch(cats / "201.starfish-101" / "201_0001.jpg")
    touch(cats / "253.faces-easy-101" / "253_0001.jpg")
    touch(cats / "257.clutter" / "257_0001.jpg")
    return tmp_path / "caltech256"


# --- imagefolder --------------------------------------------------------------------------------


def test_imagefolder_lists_splits_classes_and_voc_boxes(imagefolder: Path):
    listing = read_dataset(imagefolder)
    check_invariants(listing)
    assert listing.layout == "imagefolder"
    assert listing.root == str(imagefolder)
    assert listing.classes == [ClassInfo(0, W1, W1), ClassInfo(1, W2, W2)]
    assert listing.split_counts() == {"train": 3, "val": 2}
    items = by_name(listing)
    it = items[f"{W1}_1.JPEG"]
    assert (it.split, it.label, it.key) == ("train", 0, f"{W1}_1")
    assert it.boxes == ((0.0, 0.0, 10.0, 20.0),) and it.box_labels == (0,)
    it = items["ILSVRC2012_val_00000001.JPEG"]
    assert (it.split, it.label) == ("val", 1)
    assert it.boxes == ((10.0, 20.0, 100.0, 200.0), (1.0, 2.0, 4.0, 5.0))
    assert it.box_labels == (1, 0)
    assert items[f"{W1}_22.JPEG"].boxes == ()
    skipped = skipped_names(listing)
    assert skipped["notes.txt"] == "not an image file name"
    assert skipped["extra"] == "unexpected directory"
    assert skipped[f"{W2}_5.xml"].startswith("unreadable annotation")
    assert items[f"{W2}_5.JPEG"].boxes == ()
    assert ".DS_Store" not in skipped


def test_imagefolder_class_names_from_mapping_file(imagefolder: Path):
    touch(imagefolder / "LOC_synset_mapping.txt", f"{W1} tench, Tinca tinca\n{W2} goldfish\n")
    listing = read_dataset(imagefolder)
    assert listing.layout == "imagefolder"  # LOC_synset_mapping.txt alone is not ILSVRC
    assert [c.name for c in listing.classes] == ["tench, Tinca tinca", "goldfish"]


def test_imagefolder_flat_val_needs_ground_truth(tmp_path: Path):
    root = tmp_path / "imagenet"
    touch(root / "train" / W1 / f"{W1}_1.JPEG")
    touch(root / "train" / W2 / f"{W2}_1.JPEG")
    for i in (1, 2, 3):
        touch(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    listing = read_dataset(root)
    assert listing.split_counts() == {"train": 2}
    assert sorted(skipped_names(listing).values()) == ["no label"] * 3

    touch(
        root / "LOC_val_solution.csv",
        f"ImageId,PredictionString\nILSVRC2012_val_00000001,{W2} 1 1 5 5 \n"
        f"ILSVRC2012_val_00000002,{W1} 2 2 8 8 {W2} 1 1 2 2 \n",
    )
    listing = read_dataset(root)
    check_invariants(listing)
    items = by_name(listing)
    assert items["ILSVRC2012_val_00000001.JPEG"].label == 1
    assert items["ILSVRC2012_val_00000002.JPEG"].boxes == (
        (1.0, 1.0, 8.0, 8.0),
        (0.0, 0.0, 2.0, 2.0),
    )
    assert skipped_names(listing) == {"ILSVRC2012_val_00000003.JPEG": "no label"}


def test_imagefolder_flat_val_from_tf_synset_labels(tmp_path: Path):
    root = tmp_path / "imagenet"
    touch(root / "train" / W1 / f"{W1}_1.JPEG")
    touch(root / "train" / W2 / f"{W2}_1.JPEG")
    touch(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    touch(root / "val" / "ILSVRC2012_val_00000002.JPEG")
    touch(root / "imagenet_2012_validation_synset_labels.txt", f"{W2}\n{W1}\n")
    items = by_name(read_dataset(root))
    assert items["ILSVRC2012_val_00000001.JPEG"].label == 1
    assert items["ILSVRC2012_val_00000002.JPEG"].label == 0


# --- ilsvrc -------------------------------------------------------------------------------------


def test_ilsvrc_labels_boxes_and_skips(ilsvrc: Path):
    listing = read_dataset(ilsvrc)
    check_invariants(listing)
    assert listing.layout == "ilsvrc"
    # Every mapped class, in sorted wnid order, named by the text after the wnid.
    assert listing.classes == [
        ClassInfo(0, W1, "tench, Tinca tinca"),
        ClassInfo(1, W2, "goldfish, Carassius auratus"),
        ClassInfo(2, W3, "great white shark"),
    ]
    assert listing.split_counts() == {"train": 3, "val": 2}
    items = by_name(listing)
    it = items[f"{W1}_10026.JPEG"]
    assert it.boxes == ((0.0, 0.0, 10.0, 20.0), (30.0, 40.0, 60.0, 70.0))
    assert it.box_labels == (0, 0)
    assert items[f"{W1}_7.JPEG"].boxes == ()
    it = items[f"{W2}_7.JPEG"]  # XML fallback
    assert it.boxes == ((2.0, 3.0, 50.0, 60.0),) and it.box_labels == (1,)
    it = items["ILSVRC2012_val_00000001.JPEG"]  # class = first wnid of PredictionString
    assert (it.split, it.label, it.key) == ("val", 2, "ILSVRC2012_val_00000001")
    assert it.boxes == ((155.0, 47.0, 272.0, 332.0), (0.0, 1.0, 3.0, 4.0))
    assert it.box_labels == (2, 0)
    assert items["ILSVRC2012_val_00000002.JPEG"].label == 1
    skipped = skipped_names(listing)
    assert skipped["ILSVRC2012_val_00000003.JPEG"] == "no label"
    assert skipped["test"].startswith("no labels")
    assert skipped["n09999999"].startswith("unknown class")
    assert skipped["LOC_val_solution.csv:4"] == "unreadable csv row"
    assert not any(Path(it.path).parent.name == "test" for it in listing.items)


@pytest.mark.parametrize("sub", ["", "ILSVRC", "ILSVRC/Data/CLS-LOC", ".."])
def test_ilsvrc_accepts_roots_around_the_tree(ilsvrc: Path, sub: str):
    root = ilsvrc / sub if sub != ".." else ilsvrc.parent  # ".." = a folder wrapping it
    assert detect_layout(root) == "ilsvrc"
    listing = read_dataset(root)
    assert listing.split_counts() == {"train": 3, "val": 2}
    assert listing.classes[0].name == "tench, Tinca tinca"


def test_ilsvrc_without_csvs_uses_xml_and_train_folders(ilsvrc: Path):
    for name in ("LOC_synset_mapping.txt", "LOC_train_solution.csv", "LOC_val_solution.csv"):
        (ilsvrc / name).unlink()
    listing = read_dataset(ilsvrc, layout="ilsvrc")
    assert [c.wnid for c in listing.classes] == [W1, W2, "n09999999"]
    assert listing.split_counts() == {"train": 4}  # flat val has no labels now
    assert by_name(listing)[f"{W1}_10026.JPEG"].boxes == ((99.0, 99.0, 200.0, 200.0),)


# --- caltech ------------------------------------------------------------------------------------


def test_caltech101_excludes_background_keeps_faces_and_faces_easy(caltech101: Path):
    listing = read_dataset(caltech101)
    check_invariants(listing)
    assert listing.layout == "caltech101"
    assert [c.wnid for c in listing.classes] == ["Faces", "Faces_easy", "accordion"]
    assert [c.name for c in listing.classes] == ["Faces", "Faces_easy", "accordion"]
    assert listing.split_counts() == {"train": 7}
    assert listing.skipped == []  # BACKGROUND_Google (and its tmp) is not listed at all
    # image_0001.jpg repeats in every class: every key carries its class.
    assert {it.key for it in listing.items} >= {"Faces_image_0001", "Faces_easy_image_0001"}
    assert all(it.key.startswith(listing.classes[it.label].wnid + "_") for it in listing.items)


def test_caltech101_include_background(caltech101: Path):
    listing = read_dataset(caltech101 / "101_ObjectCategories", include_background=True)
    check_invariants(listing)
    assert listing.classes[0] == ClassInfo(0, "BACKGROUND_Google", "BACKGROUND_Google")
    assert listing.split_counts() == {"train": 9}
    assert skipped_names(listing) == {"tmp": "not an image file name"}


def test_caltech256_strays_clutter_and_names(caltech256: Path):
    listing = read_dataset(caltech256)
    check_invariants(listing)
    assert listing.layout == "caltech256"
    assert [(c.wnid, c.name) for c in listing.classes] == [
        ("001.ak47", "ak47"),
        ("056.dog", "dog"),
        ("198.spider", "spider"),
        ("201.starfish-101", "starfish-101"),
        ("253.faces-easy-101", "faces-easy-101"),
    ]
    assert listing.split_counts() == {"train": 5}
    assert {it.key for it in listing.items} == {
        "001_0001",
        "056_0001",
        "198_0001",
        "201_0001",
        "253_0001",
    }
    assert skipped_names(listing) == {
        "greg": "unexpected directory",
        "RENAME2": "not an image file name",
    }
    with_clutter = read_dataset(caltech256, include_background=True)
    assert with_clutter.classes[-1] == ClassInfo(5, "257.clutter", "clutter")


# --- folder -------------------------------------------------------------------------------------


def test_folder_of_class_folders_is_all_train(tmp_path: Path):
    root = tmp_path / "pets"
    touch(root / "dog" / "a.b.c.jpg")  # dots in the stem must not reach the key
    touch(root / "dog" / "1.jpg")
    touch(root / "dog" / "1.PNG")  # same stem, same class: suffixed
    touch(root / "cat" / "1.jpeg")
    touch(root / "cat" / "ü ber.webp")
    touch(root / "loose.jpg")
    touch(root / "README.md", "about")
    listing = read_dataset(root)
    check_invariants(listing)
    assert listing.layout == "folder"
    assert listing.classes == [ClassInfo(0, "cat", "cat"), ClassInfo(1, "dog", "dog")]
    assert listing.split_counts() == {"train": 5}
    assert {it.key for it in listing.items} == {
        "cat_1",
        "cat___ber",
        "dog_1",
        "dog_1-2",
        "dog_a_b_c",
    }
    assert skipped_names(listing) == {"loose.jpg": "no class"}


def test_folder_with_train_and_val_splits(tmp_path: Path):
    root = tmp_path / "flowers"
    touch(root / "train" / "rose" / "1.jpg")
    touch(root / "train" / "tulip" / "1.jpg")
    touch(root / "validation" / "rose" / "1.jpg")  # same stem and class as in train
    touch(root / "validation" / "daisy" / "2.jpg")
    touch(root / "train" / "orphan.jpg")
    touch(root / "test" / "3.jpg")  # unlabelled: not listed
    touch(root / "extras" / "x.jpg")
    assert detect_layout(root) == "folder"
    listing = read_dataset(root)
    check_invariants(listing)
    assert [c.wnid for c in listing.classes] == ["daisy", "rose", "tulip"]
    assert listing.split_counts() == {"train": 2, "val": 2}
    items = {(it.split, Path(it.path).parent.name): it for it in listing.items}
    assert items["val", "daisy"].label == 0 and items["train", "tulip"].label == 2
    assert items["train", "rose"].key != items["val", "rose"].key
    skipped = skipped_names(listing)
    assert skipped["orphan.jpg"] == "no class"
    assert skipped["test"].startswith("no labels")
    assert skipped["extras"] == "not a split directory"


def test_folder_test_split_with_class_folders_is_listed(tmp_path: Path):
    root = tmp_path / "ds"
    touch(root / "train" / "a" / "1.jpg")
    touch(root / "test" / "a" / "2.jpg")
    assert read_dataset(root).split_counts() == {"train": 1, "test": 1}


def test_forcing_folder_on_imagenet_gives_no_boxes(imagefolder: Path):
    listing = read_dataset(imagefolder, layout="folder")
    assert listing.layout == "folder"
    assert listing.split_counts() == {"train": 3, "val": 2}
    assert all(it.boxes == () for it in listing.items)


# --- detection ----------------------------------------------------------------------------------


def test_detect_every_layout(imagefolder, ilsvrc, caltech101, caltech256, tmp_path: Path):
    touch(tmp_path / "plain" / "cat" / "1.jpg")
    touch(tmp_path / "nested" / "caltech-101" / "101_ObjectCategories" / "a" / "image_0001.jpg")
    touch(tmp_path / "bare256" / "001.ak47" / "001_0001.jpg")
    touch(tmp_path / "bare256" / "002.american-flag" / "002_0001.jpg")
    cases = {
        imagefolder: "imagefolder",
        ilsvrc: "ilsvrc",
        caltech101: "caltech101",
        caltech101 / "101_ObjectCategories": "caltech101",
        tmp_path / "nested": "caltech101",
        caltech256: "caltech256",
        caltech256 / "256_ObjectCategories": "caltech256",
        tmp_path / "bare256": "caltech256",
        tmp_path / "plain": "folder",
    }
    for root, layout in cases.items():
        assert detect_layout(root) == layout, root
        assert detect_layout(str(root)) == layout
    assert read_dataset(tmp_path / "nested").split_counts() == {"train": 1}
    assert set(LAYOUTS) == set(cases.values())


def test_listing_is_deterministic_and_picklable(ilsvrc: Path):
    a, b = read_dataset(ilsvrc), read_dataset(ilsvrc)
    assert a == b
    items = pickle.loads(pickle.dumps(a.items))  # items travel to Ray tasks
    assert items == a.items
    with pytest.raises(AttributeError):
        a.items[0].label = 5  # type: ignore[misc]


# --- errors -------------------------------------------------------------------------------------


def assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_missing_root(tmp_path: Path):
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path / "nope")
    assert_one_line(err, "does not exist", "expected", "demo-data")
    with pytest.raises(DatasetError):
        detect_layout(tmp_path / "nope")
    touch(tmp_path / "file.jpg")
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path / "file.jpg")
    assert_one_line(err, "not a directory")


def test_empty_dataset(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path / "empty")
    assert_one_line(err, "cannot recognise", "expected", "demo-data")
    touch(tmp_path / "empty" / "cat" / "notes.txt", "no images")
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path / "empty")
    assert_one_line(err, "no images found", "expected", "not an image file name")
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path / "empty", layout="caltech256")
    assert_one_line(err, "no images found", "256_ObjectCategories")


def test_unknown_or_mismatched_layout(imagefolder: Path, caltech101: Path):
    with pytest.raises(DatasetError) as err:
        read_dataset(imagefolder, layout="coco")
    assert_one_line(err, "unknown layout 'coco'", "imagefolder", "caltech256")
    with pytest.raises(DatasetError) as err:
        read_dataset(imagefolder, layout="ilsvrc")
    assert_one_line(err, "ILSVRC/Data/CLS-LOC")
    with pytest.raises(DatasetError) as err:
        read_dataset(caltech101, layout="imagefolder")
    assert_one_line(err, "train/<wnid>")
    csvs_only = imagefolder.parent / "csvs"
    touch(csvs_only / "LOC_synset_mapping.txt", f"{W1} tench\n")
    touch(csvs_only / "LOC_val_solution.csv", "ImageId,PredictionString\n")
    (csvs_only / "downloads").mkdir()
    assert detect_layout(csvs_only) == "ilsvrc"
    with pytest.raises(DatasetError) as err:  # csvs without images: say what is missing
        read_dataset(csvs_only)
    assert_one_line(err, "ILSVRC/Data/CLS-LOC")
