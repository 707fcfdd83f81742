"""Raw dataset readers: list an ImageNet, Caltech, folder-of-class-folders or PASCAL VOC tree
into items, without decoding anything.

``layout`` names a tree's layout, ``listing`` lists it (``read_dataset``; ``stream_dataset``
for a dataset too big to hold, sorted through ``records``), ``annotations``
reads the labels and boxes beside the images, ``voc`` lists VOC 2012 for classification
transfer, and ``items`` holds what they return.
"""

from convplat.pipeline.readers.items import (
    IMAGE_EXTENSIONS,
    ClassInfo,
    Corners,
    DatasetListing,
    Item,
    display_path,
)
from convplat.pipeline.readers.layout import LAYOUTS, detect_layout
from convplat.pipeline.readers.listing import DatasetStream, read_dataset, stream_dataset
from convplat.pipeline.readers.voc import VOC_CLASSES, VOC_SPLITS, VocListing, read_voc

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "VOC_CLASSES",
    "VOC_SPLITS",
    "ClassInfo",
    "Corners",
    "DatasetListing",
    "DatasetStream",
    "Item",
    "VocListing",
    "detect_layout",
    "display_path",
    "read_dataset",
    "read_voc",
    "stream_dataset",
]
