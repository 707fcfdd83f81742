"""Shared fixtures: tiny JPEG trees with real-archive quirks, and one local Ray for the session."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

# The suite's peak disk use under the temporary directory (measured: 4.1 GB, the trained runs
# and checkpoints of one module at a time; see free_module_dirs).
PEAK_DISK_GB = 4.1


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say up front when the disk cannot hold the suite: a full disk otherwise shows up as
    unrelated failures in whichever test writes next (and once as a pytest INTERNALERROR)."""
    import tempfile

    free = shutil.disk_usage(tempfile.gettempdir()).free / 1e9
    if free < 1.5 * PEAK_DISK_GB:
        print(
            f"\nconvplat tests: only {free:.1f} GB free under {tempfile.gettempdir()}; the suite "
            f"needs about {PEAK_DISK_GB} GB there at its peak"
        )


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like (H, W, 3) uint8 image: gradients plus a few blobs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        128
        + 60 * np.sin(x / rng.uniform(15, 60) + rng.uniform(0, 6))
        + 50 * np.cos(y / rng.uniform(15, 60) + rng.uniform(0, 6))
        for _ in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def jpeg_bytes(
    width: int, height: int, seed: int = 0, mode: str = "RGB", quality: int = 92, fmt: str = "JPEG"
) -> bytes:
    """Encoded bytes of a photo-like image in a given Pillow mode (RGB, L, CMYK) and format."""
    image = Image.fromarray(photo(width, height, seed))
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, fmt, quality=quality)
    else:
        image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module", autouse=True)
def free_module_dirs(request, tmp_path_factory):
    """Remove the module's ``tmp_path_factory`` dirs (trained runs of ~0.2-2.4 GB each) once its
    tests are done, unless one failed: the suite's peak disk use is then one module's, not the
    sum of all (function ``tmp_path`` dirs go with ``tmp_path_retention_policy``)."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            if path.is_symlink():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs) shared by every test that needs Ray."""
    import ray

    from convplat.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache (``TORCH_HOME``) for this test: nothing from the user's is read."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def cached_alexnet(torch_home):
    """A randomly initialised torchvision AlexNet whose state dict sits in the temporary torch
    cache under the file name torchvision's weights API uses (nothing is downloaded); returns
    that model, in eval mode, as the reference for ``torchvision:alexnet``."""
    import torch
    import torchvision

    from convplat.training.models.pretrained import torchvision_cache_file

    torch.manual_seed(0)
    reference = torchvision.models.alexnet(weights=None).eval()
    path = torchvision_cache_file()
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    return reference


def make_imagenet_tree(
    root,
    classes: int = 3,
    train_per_class: int = 5,
    val_per_class: int = 2,
    quirks: bool = True,
    size: tuple[int, int] = (90, 70),
):
    """A tiny ImageFolder-layout ImageNet with VOC boxes and, optionally, every archive quirk.

    Returns a dict of the quirk files: the decodable ones must be kept, the others rejected.
    """
    from pathlib import Path

    root = Path(root)
    wnids = [f"n{10000000 + 1111 * c:08d}" for c in range(classes)]
    seed = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in wnids:
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                seed += 1
                w, h = size if seed % 3 else size[::-1]
                (folder / f"{wnid}_{seed}.JPEG").write_bytes(jpeg_bytes(w, h, seed=seed))
                xml = root / "Annotations" / split / wnid / f"{wnid}_{seed}.xml"
                xml.parent.mkdir(parents=True, exist_ok=True)
                xml.write_text(
                    f"<annotation><filename>{wnid}_{seed}</filename><size><width>{w}</width>"
                    f"<height>{h}</height><depth>3</depth></size><object><name>{wnid}</name>"
                    f"<bndbox><xmin>11</xmin><ymin>6</ymin><xmax>40</xmax><ymax>30</ymax>"
                    f"</bndbox></object></annotation>"
                )
    quirk_files: dict[str, tuple[str, bool]] = {}
    if quirks:
        train = root / "train" / wnids[0]
        specs = {
            "cmyk": (jpeg_bytes(80, 64, seed=101, mode="CMYK"), True),
            "gray": (jpeg_bytes(64, 80, seed=102, mode="L"), True),
            "png": (jpeg_bytes(72, 72, seed=103, fmt="PNG"), True),
            "truncated": (jpeg_bytes(300, 200, seed=104)[:700], False),
            "empty": (b"", False),
            "text": (b"not an image, just text\n", False),
        }
        for name, (data, valid) in specs.items():
            path = train / f"{wnids[0]}_q{name}.JPEG"
            path.write_bytes(data)
            quirk_files[name] = (str(path), valid)
        (train / "README.txt").write_text("stray file")
    return {"wnids": wnids, "quirks": quirk_files}
