"""Transfer's feature cache: ``<runs>/.cache/features-<key>.npz``, one file per cut.

The key hashes the checkpoint's weight bytes, the cut, the augmentation, the mean image and
the dataset listing (relative paths, file sizes, labels), so a changed checkpoint or dataset
never reuses stale features; a damaged cache file is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from convplat.pipeline.readers import DatasetListing
from convplat.storage import resolve

CACHE_VERSION = 1


def dataset_fingerprint(listing: DatasetListing) -> str:
    """sha256 of the classes and every item's relative path, file size and label."""
    h = hashlib.sha256()
    h.update(json.dumps([c.wnid for c in listing.classes]).encode())
    for item in listing.items:
        try:
            size = os.stat(item.path).st_size
        except OSError:
            size = -1
        rel = os.path.relpath(item.path, listing.root)
        h.update(f"{rel}\t{size}\t{item.label}\n".encode())
    return h.hexdigest()


def feature_key(**parts) -> str:
    """sha256 over the JSON of everything the features depend on."""
    return hashlib.sha256(
        json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True).encode()
    ).hexdigest()


def cache_name(key: str) -> str:
    return f"features-{key[:24]}.npz"


def save_cache(
    cache_dir: str,
    key: str,
    cut: str,
    features: np.ndarray,
    kept: np.ndarray,
    rejected: list[tuple[int, str]],
) -> str:
    """Write one cut's features (atomically); returns the file's path or URI."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        key=np.array(key),
        cut=np.array(cut),
        features=features,
        kept=np.asarray(kept, np.int64),
        rejected_index=np.array([i for i, _ in rejected], np.int64),
        rejected_reason=np.array([r for _, r in rejected], dtype=np.str_),
    )
    location = resolve(cache_dir)
    location.write_bytes(cache_name(key), buffer.getvalue())
    return location.join(cache_name(key))


def load_cache(cache_dir: str, key: str) -> dict | None:
    """The cached arrays for ``key``, or None (missing, unreadable or another key)."""
    location = resolve(cache_dir)
    name = cache_name(key)
    if not location.exists(name):
        return None
    try:
        with np.load(io.BytesIO(location.read_bytes(name)), allow_pickle=False) as arrays:
            if str(arrays["key"]) != key:
                return None
            return {
                "features": arrays["features"],
                "kept": arrays["kept"],
                "rejected": list(
                    zip(
                        arrays["rejected_index"].tolist(),
                        arrays["rejected_reason"].tolist(),
                        strict=True,
                    )
                ),
            }
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache file is recomputed, never trusted
