"""Synthetic data for ``convplat demo-data``: learnable ImageNet-, Caltech- and VOC-like trees.

Not part of the ImageNet pipeline: it writes raw trees that ``prepare`` and ``transfer`` read as
they would read the real archives. ``drawing`` holds the classes and the image drawing,
``datasets`` writes the trees.
"""

from convplat.demo.datasets import LAYOUTS, MARKER, make_demo_data, prediction_string, voc_xml
from convplat.demo.drawing import (
    MAX_CALTECH_CLASSES,
    MAX_CLASSES,
    MAX_VOC_CLASSES,
    SHAPES,
    ClassSpec,
    LabelledBox,
    caltech_class_specs,
    draw_background,
    draw_sample,
    imagenet_class_specs,
    voc_class_specs,
)

__all__ = [
    "LAYOUTS",
    "MARKER",
    "MAX_CALTECH_CLASSES",
    "MAX_CLASSES",
    "MAX_VOC_CLASSES",
    "SHAPES",
    "ClassSpec",
    "LabelledBox",
    "caltech_class_specs",
    "draw_background",
    "draw_sample",
    "imagenet_class_specs",
    "make_demo_data",
    "prediction_string",
    "voc_class_specs",
    "voc_xml",
]
