"""Frozen ImageNet features of a whole transfer dataset: from the cache, or extracted once.

Features are computed once per image (and view: centre crop, plus its mirror with ``flip``)
and cached (:mod:`convplat.transfer.cache`). Large datasets are extracted by Ray tasks (one
model load per chunk of images), small ones in-process.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from convplat.cluster import RAY_MIN_IMAGES, use_ray
from convplat.pipeline.readers import DatasetListing
from convplat.storage import resolve
from convplat.transfer.cache import (
    cache_name,
    dataset_fingerprint,
    feature_key,
    load_cache,
    save_cache,
)
from convplat.transfer.checkpoint import Checkpoint
from convplat.transfer.extract import (
    DEFAULT_QUALITY,
    StoredWeights,
    decode_files,
    extract_chunk,
    extract_jpegs,
)


@dataclass
class DatasetFeatures:
    """What the protocol needs from a dataset, per decodable image (``kept`` order)."""

    kept: np.ndarray  # indices into listing.items
    labels: np.ndarray  # (N,)
    features: dict[str, np.ndarray]  # cut -> (V, N, dim)
    jpegs: list[bytes] | None  # S x S JPEGs (modes scratch/full)
    rejected: list[tuple[str, str]]  # (path, reason)
    cache: dict[str, dict] = field(default_factory=dict)  # cut -> {"file", "reused"}
    executor: str = "none"
    seconds: float = 0.0


def gather(
    listing: DatasetListing,
    checkpoint: Checkpoint,
    mean: np.ndarray,
    *,
    cuts: Sequence[str] = ("fc7",),
    flip: bool = False,
    need_jpegs: bool = False,
    quality: int = DEFAULT_QUALITY,
    cache_dir: str | None = None,
    executor: str = "auto",
    ray_min_images: int = RAY_MIN_IMAGES,
    address: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    progress=None,
) -> DatasetFeatures:
    """Features of every image at every cut (from the cache when there), and the decoded JPEGs
    when ``need_jpegs``. Decoding and extraction run once, together, for whatever is missing.

    ``progress``: an optional rich Progress to report images on.
    """
    started = time.perf_counter()
    size = int(mean.shape[0])
    fingerprint = dataset_fingerprint(listing)
    mean_sha = hashlib.sha256(np.ascontiguousarray(mean, np.float32).tobytes()).hexdigest()
    keys = {
        cut: feature_key(
            weights=checkpoint.sha256,
            model=checkpoint.model,
            cut=cut,
            augment="flip" if flip else "none",
            dataset=fingerprint,
            mean=mean_sha,
            input_scale=checkpoint.input_scale,
            size=size,
            quality=quality,
        )
        for cut in cuts
    }
    features: dict[str, np.ndarray] = {}
    cache_info: dict[str, dict] = {}
    kept = None
    rejected_idx: list[tuple[int, str]] = []
    if cache_dir is not None:
        for cut, key in keys.items():
            hit = load_cache(cache_dir, key)
            if hit is not None:
                features[cut] = hit["features"]
                kept, rejected_idx = hit["kept"], hit["rejected"]
                cache_info[cut] = {"file": resolve(cache_dir).join(cache_name(key)), "reused": True}
    missing = [c for c in cuts if c not in features]
    jpegs = None
    used = "cache"
    if missing or need_jpegs or kept is None:
        paths = [item.path for item in listing.items]
        spec = dict(
            model_name=checkpoint.model,
            num_classes=checkpoint.num_classes,
            mean=mean,
            input_scale=checkpoint.input_scale,
            cuts=tuple(missing),
            flip=flip,
            size=size,
            quality=quality,
            batch_size=batch_size,
            keep_jpegs=need_jpegs,
            device=device,
        )
        if use_ray(executor, len(paths), address, ray_min_images):
            what = f"decode + {'/'.join(missing)} (Ray)" if missing else "decode (Ray)"
            advance = _advancer(progress, what, len(paths))
            result = _run_ray(paths, spec, checkpoint.weights, address, advance)
            used = "ray"
        else:
            result = _run_local(paths, spec, checkpoint, progress)
            used = "local"
        reasons = result["reasons"]
        kept = np.array([i for i, r in enumerate(reasons) if r is None], np.int64)
        rejected_idx = [(i, r) for i, r in enumerate(reasons) if r is not None]
        jpegs = result["jpegs"]
        for cut in missing:
            features[cut] = result["features"][cut]
            info = {"file": None, "reused": False}
            if cache_dir is not None:
                info["file"] = save_cache(
                    cache_dir, keys[cut], cut, features[cut], kept, rejected_idx
                )
            cache_info[cut] = info
    assert kept is not None
    labels = np.array([listing.items[i].label for i in kept], np.int64)
    return DatasetFeatures(
        kept=np.asarray(kept, np.int64),
        labels=labels,
        features=features,
        jpegs=jpegs,
        rejected=[(listing.items[i].path, r) for i, r in rejected_idx],
        cache=cache_info,
        executor=used,
        seconds=time.perf_counter() - started,
    )


def _advancer(progress, description: str, total: int) -> Callable[[int], None]:
    if progress is None:
        return lambda n: None
    task = progress.add_task(description, total=total, rate="")
    return lambda n: progress.advance(task, n)


def _run_local(paths: list[str], spec: dict, checkpoint: Checkpoint, progress) -> dict:
    """Decode, then extract, in this process (on cuda when present), with progress bars."""
    jpegs: list[bytes | None] = []
    reasons: list[str | None] = []
    cuts = spec["cuts"]
    advance = _advancer(progress, "decode", len(paths))
    step = 64
    for start in range(0, len(paths), step):
        j, r = decode_files(paths[start : start + step], spec["size"], spec["quality"])
        jpegs += j
        reasons += r
        advance(len(j))
    ok = [j for j in jpegs if j is not None]
    if not cuts:
        return {"reasons": reasons, "jpegs": ok, "features": {}}
    advance = _advancer(progress, f"{'/'.join(cuts)} features", len(ok))
    features = extract_jpegs(
        ok,
        model_name=checkpoint.model,
        num_classes=checkpoint.num_classes,
        weights=checkpoint.weights,
        mean=spec["mean"],
        input_scale=spec["input_scale"],
        cuts=cuts,
        flip=spec["flip"],
        batch_size=spec["batch_size"],
        device=spec["device"],
        pool=spec.get("pool", "flatten"),
        last_conv_alias=spec.get("last_conv_alias", True),
        on_batch=advance,
    )
    return {"reasons": reasons, "jpegs": ok if spec["keep_jpegs"] else None, "features": features}


def _run_ray(paths: list[str], spec: dict, weights: bytes, address: str | None, advance) -> dict:
    """Fan ``extract_chunk`` out over Ray tasks (one GPU each when the cluster has GPUs)."""
    import ray

    from convplat.cluster import cluster_size, ensure_ray, fan_out

    ensure_ray(address)
    cpus, gpus = cluster_size()
    if gpus:
        chunk = max(256, math.ceil(len(paths) / (4 * gpus)))
    else:
        # About two chunks per CPU (each worker process builds the model once: StoredWeights).
        chunk = max(64, math.ceil(len(paths) / (2 * cpus)))
    # Each worker process builds the model once, from the layers up to the cuts only.
    weights_ref = StoredWeights.for_cuts(
        weights,
        spec["model_name"],
        spec["num_classes"],
        spec["cuts"],
        spec.get("last_conv_alias", True),
    )
    args = {**spec, "mean": ray.put(spec["mean"])}
    if not gpus:
        args["device"] = "cpu"
    starts = list(range(0, len(paths), chunk))
    jobs = ((s, (paths[s : s + chunk],), {**args, "weights": weights_ref}) for s in starts)
    results: dict[int, dict] = {}
    for s, result in fan_out(extract_chunk, jobs, num_cpus=1, num_gpus=1 if gpus else 0):
        results[s] = result
        advance(len(result["reasons"]))
    ordered = [results[s] for s in starts]
    reasons = [r for res in ordered for r in res["reasons"]]
    jpegs = [j for res in ordered for j in res["jpegs"]] if spec["keep_jpegs"] else None
    features = {
        cut: np.concatenate([res["features"][cut] for res in ordered], axis=1)
        for cut in spec["cuts"]
    }
    return {"reasons": reasons, "jpegs": jpegs, "features": features}
