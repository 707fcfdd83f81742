"""Former home of transfer's checkpoint, extractor, extraction, cache and gathering code, now
split into ``checkpoint``, ``extractor``, ``extract``, ``cache`` and ``gather``."""

# re-exported for callers not yet moved (coordinator removes at merge: transfer.py, voc.py,
# benchmarks/transfer.py import from here; then this module is deleted)
from convplat.transfer.checkpoint import Checkpoint, load_checkpoint  # noqa: F401
from convplat.transfer.extract import (  # noqa: F401
    DEFAULT_QUALITY,
    decode_files,
    decode_pixels,
    default_device,
    make_transform,
)
from convplat.transfer.extractor import FeatureExtractor  # noqa: F401
from convplat.transfer.gather import DatasetFeatures, gather  # noqa: F401
