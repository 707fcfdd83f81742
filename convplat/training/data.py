"""Shards -> batches: WebDataset streams split explicitly over (rank, loader worker) slots.

Training yields exactly ``batches_per_epoch`` full batches on every rank (DDP never waits on a
rank that ran dry); evaluation reads every sample exactly once across all ranks (no padding, so
top-1 counts are exact). Workers do the per-sample work only - shuffle the raw samples, decode
with libjpeg-turbo (simplejpeg), copy a uint8 crop into the batch - and leave every float
operation to :class:`convplat.training.augment.BatchTransform` on the training device.

Batches are ``(images, labels, windows)``: uint8 ``(B, h, w, 3)``, int64 ``(B,)`` and int64
``(B, 3)`` rows ``[top, left, flip]`` giving each image's position in the ``S x S`` frame of
the mean image (``S`` = the manifest's ``size``) and whether the transform must mirror it.

What a sample becomes is pluggable (:class:`SampleCodec`): localization and detection read the
same streams - shard plan, cycling, shuffling, loader processes, exact-once evaluation - with
their own decode and collate (``convplat.localize.box_data``, ``.detection_data``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from itertools import chain, islice
from typing import Any, Protocol

import numpy as np
import simplejpeg
import torch
import webdataset as wds

from convplat.errors import ConfigError, DatasetError
from convplat.pipeline.shardset import (
    IMAGE_AND_LABEL,
    ShardSet,
    ShardTask,
    assign_shards,
    read_manifest,
    split_shards,
)
from convplat.training.augment import random_windows
from convplat.training.slots import SlotTable, WorkerSlots, lending_pool

EVAL_MODES = ("center", "ten-crop", "full")
DEFAULT_SHUFFLE_BUFFER = 1000


# --------------------------------------------------------------------------- dataset files
def default_num_workers() -> int:
    """Loader processes to use: one core is left to the training process, at most 8.

    Under Ray Train pass the worker's own CPU share instead (every Train worker on a node
    would otherwise take the whole node).
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cpus or 1) - 1))


# --------------------------------------------------------------------------- batch counts
def train_batches(count: int, batch_size: int, world_size: int, drop_last: bool = True) -> int:
    """Batches per rank per epoch: ``count // (world_size * batch_size)`` (rounded up if not
    ``drop_last``); raises DatasetError when that is zero."""
    global_batch = world_size * batch_size
    batches = count // global_batch if drop_last else math.ceil(count / global_batch)
    if batches < 1:
        raise DatasetError(
            f"the training split has {count} samples, fewer than one global batch of "
            f"{global_batch} ({world_size} ranks x batch size {batch_size}); lower the batch "
            f"size to at most {max(1, count // world_size)} or prepare more images"
        )
    return batches


def _starts(shards: list[tuple[str, int]]) -> dict[str, int]:
    """Each shard's first sample's position in the split (manifest order)."""
    starts, position = {}, 0
    for name, count in shards:
        starts[name] = position
        position += count
    return starts


def _kept(task: ShardTask, start: int, limit: int) -> range:
    """The in-shard indices of ``task`` that evaluation reads: all of its share, or with
    ``limit`` those among the split's first ``limit`` samples."""
    end = task.count if not limit else max(0, min(task.count, limit - start))
    return range(task.part, end, task.parts)


def eval_batches(
    shards: list[tuple[str, int]],
    batch_size: int,
    world_size: int,
    rank: int,
    num_workers: int,
    limit: int = 0,
) -> int:
    """Batches the evaluation loader yields on ``rank``: each of its workers' shares, batched
    separately (so each worker may end on a smaller batch); ``limit``: only the split's first
    ``limit`` samples are read."""
    workers = max(1, num_workers)
    plan = assign_shards(shards, world_size * workers)
    slots = plan[rank * workers : (rank + 1) * workers]
    starts = _starts(shards)
    return sum(
        math.ceil(sum(len(_kept(t, starts[t.name], limit)) for t in tasks) / batch_size)
        for tasks in slots
    )


def num_batches(
    shard_dir: str | os.PathLike | dict,
    split: str = "train",
    *,
    batch_size: int,
    world_size: int = 1,
    rank: int = 0,
    num_workers: int | None = None,
    drop_last: bool = True,
    training: bool | None = None,
) -> int:
    """How many batches :func:`train_loader` (``training``, default: ``split == "train"``) or
    :func:`eval_loader` yields on ``rank``; the training count is the same on every rank.

    ``shard_dir`` may also be an already-read manifest. ``num_workers`` matters only for
    evaluation and must match the loader's (None: :func:`default_num_workers`).
    """
    manifest = shard_dir if isinstance(shard_dir, dict) else read_manifest(shard_dir)
    shards = split_shards(manifest, split)
    if split == "train" if training is None else training:
        return train_batches(sum(c for _, c in shards), batch_size, world_size, drop_last)
    workers = default_num_workers() if num_workers is None else num_workers
    return eval_batches(shards, batch_size, world_size, rank, workers)


# --------------------------------------------------------------------------- sample codecs
class SampleCodec(Protocol):
    """What a stream makes of its raw samples; everything else (which shards, in what order,
    in which process) is the stream's. Instances cross into the loader processes.

    ``decode`` runs once per raw sample in the loader process and may return None to leave a
    training sample out (never in evaluation, whose batch counts are known in advance);
    ``collate`` turns a batch's decoded samples into what the loader yields (``rng``: the
    slot's per-epoch generator in training, None in evaluation).
    """

    suffixes: tuple[str, ...]  # the tar members read (webdataset suffixes, with the dot)

    def count(self, shard_set: ShardSet, split: str) -> int:
        """The training samples of ``split`` that ``decode`` keeps (sets the epoch length)."""
        ...

    def decode(self, sample: dict) -> Any: ...

    def collate(self, items: list, rng: np.random.Generator | None) -> Any: ...


def _decode(sample: dict) -> np.ndarray:
    try:
        return simplejpeg.decode_jpeg(sample["jpg"], colorspace="RGB")
    except (KeyError, ValueError) as exc:
        raise DatasetError(
            f"cannot decode sample {sample.get('__key__')!r} of {sample.get('__url__')}: {exc}"
        ) from None


def _frame(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size x size`` frame the mean image covers (the whole image for cropped
    shards; for ``--no-crop`` shards the same window the statistics used)."""
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    if height < size or width < size:
        raise DatasetError(f"an image of {height}x{width} is smaller than the {size}x{size} frame")
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def new_uint8_batch(shape) -> tuple[torch.Tensor, np.ndarray]:
    """An empty uint8 batch tensor and its numpy view; in a loader process it is made in shared
    memory first, so filling it in place is the only copy (the queue then sends a handle), and
    is a reused buffer when the loader lends one (:mod:`convplat.training.slots`)."""
    if (pool := lending_pool()) is not None:
        images = pool.new(tuple(shape))
    else:
        images = torch.empty(shape, dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            images.share_memory_()
    return images, images.numpy()


def _labels(samples) -> torch.Tensor:
    return torch.tensor([int(s["cls"]) for s in samples], dtype=torch.int64)


def _check_crop(crop_size: int, frame: int) -> None:
    if not 1 <= crop_size <= frame:
        raise ConfigError(f"crop size: expected 1..{frame} (the shard image size), got {crop_size}")


class RandomCrops:
    """Classification training: random ``crop x crop`` windows of the frame in one uint8 batch.

    ``decode`` passes the raw sample on: ``collate`` decodes each image and copies its crop
    into the batch at once, while the decoded frame is still in the CPU cache.
    """

    suffixes = IMAGE_AND_LABEL

    def __init__(self, crop: int, frame: int) -> None:
        _check_crop(crop, frame)
        self.crop, self.frame = crop, frame

    def count(self, shard_set: ShardSet, split: str) -> int:
        return shard_set.count(split)

    def decode(self, sample: dict) -> dict:
        return sample

    def collate(self, samples, rng) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        crop, count = self.crop, len(samples)
        windows = random_windows(count, self.frame, self.frame, crop, rng)
        images, pixels = new_uint8_batch((count, crop, crop, 3))
        for i, (sample, (top, left, _)) in enumerate(zip(samples, windows.tolist(), strict=True)):
            frame = _frame(_decode(sample), self.frame)
            pixels[i] = frame[top : top + crop, left : left + crop]
        return images, _labels(samples), torch.from_numpy(windows)


class EvalCrops:
    """Classification evaluation: centre crops, or the whole frame (ten-crop) or image (full);
    ``keys`` appends the batch's sample keys."""

    suffixes = IMAGE_AND_LABEL

    def __init__(self, mode: str, crop: int, frame: int, keys: bool = False) -> None:
        if mode not in EVAL_MODES:
            raise ConfigError(
                f"evaluation mode: expected one of {', '.join(EVAL_MODES)}, got {mode!r}"
            )
        _check_crop(crop, frame)
        self.mode, self.crop, self.frame, self.keys = mode, crop, frame, keys

    def count(self, shard_set: ShardSet, split: str) -> int:
        return shard_set.count(split)

    def decode(self, sample: dict) -> dict:
        return sample

    def collate(self, samples, rng=None):
        count = len(samples)
        windows = torch.zeros((count, 3), dtype=torch.int64)
        if self.mode == "full":
            decoded = [torch.from_numpy(_decode(s)) for s in samples]
            same = all(d.shape == decoded[0].shape for d in decoded)
            images = torch.stack(decoded) if same else decoded
        else:
            side = self.crop if self.mode == "center" else self.frame
            offset = (self.frame - side) // 2
            windows[:, :2] = offset
            images, pixels = new_uint8_batch((count, side, side, 3))
            for i, sample in enumerate(samples):
                frame = _frame(_decode(sample), self.frame)
                pixels[i] = frame[offset : offset + side, offset : offset + side]
        batch = (images, _labels(samples), windows)
        return batch + ([s["__key__"] for s in samples],) if self.keys else batch


# --------------------------------------------------------------------------- pipeline stages
def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _slot(rank: int, world_size: int) -> tuple[int, int, int]:
    """(this slot, number of slots, loader worker id) - known only once iteration starts."""
    worker, workers = _worker()
    return rank * workers + worker, world_size * workers, worker


def _seed(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) for p in parts])


_SHARD_ORDER, _SHARD_CYCLE, _SAMPLE_SHUFFLE, _WINDOWS = 1, 2, 3, 4

# The epoch a training stage reads when its stream starts: a plain int, or the shared-memory
# 0-d tensor of a TrainLoader (set in the main process, read in the loader processes).
Epoch = int | torch.Tensor


def _train_tasks(shards, seed: int, epoch: int, slot: int, slots: int) -> list[ShardTask]:
    """One slot's shard tasks for one epoch; shard order shuffled with ``(seed, epoch)``."""
    order = np.random.default_rng(_seed(seed, epoch, _SHARD_ORDER)).permutation(len(shards))
    tasks = assign_shards([shards[i] for i in order], slots)[slot]
    # A slot must see some sample on every pass, or cycling would spin forever: with more
    # slots sharing a shard than it has samples, the extra slots repeat parts.
    return [
        ShardTask(t.name, t.count, min(t.parts, t.count), t.part % min(t.parts, t.count))
        for t in tasks
    ]


class _TrainSamples:
    """Stage 1 (train): this slot's shards, cycled forever (reshuffled on every pass)."""

    def __init__(
        self, shard_set, shards, seed: int, epoch: Epoch, rank: int, world_size: int, suffixes
    ) -> None:
        self.shard_set, self.shards, self.seed, self.epoch = shard_set, shards, seed, epoch
        self.rank, self.world_size, self.suffixes = rank, world_size, suffixes

    def __call__(self) -> Iterator[dict]:
        slot, slots, worker = _slot(self.rank, self.world_size)
        epoch = int(self.epoch)
        tasks = _train_tasks(self.shards, self.seed, epoch, slot, slots)
        cycle = np.random.default_rng(_seed(self.seed, epoch, self.rank, worker, _SHARD_CYCLE))
        order = tasks
        while True:
            produced = 0
            for task in order:
                for sample in self.shard_set.read_samples(task, self.suffixes):
                    produced += 1
                    yield sample
            if produced == 0:  # cycling on would hang every rank at the next all-reduce
                names = ", ".join(t.name for t in tasks)
                raise DatasetError(f"shards {names} hold no samples, unlike manifest.json says")
            order = [tasks[i] for i in cycle.permutation(len(tasks))]


class _EvalSamples:
    """Stage 1 (evaluation): this slot's shards, once, in manifest order; with ``limit`` only
    the split's first ``limit`` samples. Each sample gets ``__index__``, its position in the
    split, so results can be put in the same order whatever the number of slots."""

    def __init__(self, shard_set, shards, rank: int, world_size: int, suffixes, limit: int):
        self.shard_set, self.shards = shard_set, shards
        self.rank, self.world_size = rank, world_size
        self.suffixes, self.limit = suffixes, limit

    def __call__(self) -> Iterator[dict]:
        slot, slots, _ = _slot(self.rank, self.world_size)
        starts = _starts(self.shards)
        for task in assign_shards(self.shards, slots)[slot]:
            kept = _kept(task, starts[task.name], self.limit)
            if not kept:
                continue
            reader = self.shard_set.read_samples(task, self.suffixes)
            # Read to the end when all is kept, so the reader checks the shard's sample count.
            samples = reader if len(kept) == task.samples else islice(reader, len(kept))
            for j, sample in enumerate(samples):  # the reader yields the indices in ``kept``
                sample["__index__"] = starts[task.name] + task.part + j * task.parts
                yield sample
            reader.close()  # a no-op at its end; at the limit the rest stays unread


class _SlotShuffle:
    """Stage 2 (train): shuffle the raw samples, seeded per (seed, epoch, rank, worker).

    When one pass over the slot's shards fits in ``bufsize``, each pass is permuted exactly
    (an epoch is then a permutation, never a sample twice in a batch); otherwise webdataset's
    shuffle buffer mixes the stream: it starts yielding once it holds ``initial`` samples (one
    batch, so the first decode does not wait for ``bufsize`` reads) and grows to ``bufsize``.
    The buffer is fed only the ``needed`` samples the slot's batches take this epoch, then
    drained, so an epoch reads no sample it does not use (``bufsize`` extra reads an epoch, a
    cost that does not shrink with the epoch, were 15 % of a 4,096-image epoch); should the
    codec leave samples out, the stream goes on through a fresh buffer.
    """

    def __init__(
        self,
        bufsize: int,
        shards,
        seed: int,
        epoch: Epoch,
        rank: int,
        world_size: int,
        initial: int,
        batches: tuple[int, int] | None = None,
    ) -> None:
        self.bufsize, self.shards, self.seed, self.epoch = bufsize, shards, seed, epoch
        self.rank, self.world_size, self.initial = rank, world_size, min(initial, bufsize)
        self.batches = batches  # (batch size, batches an epoch over all loader workers)

    def __call__(self, samples):
        if self.bufsize <= 1:
            return samples
        slot, slots, worker = _slot(self.rank, self.world_size)
        epoch = int(self.epoch)
        per_pass = sum(t.samples for t in _train_tasks(self.shards, self.seed, epoch, slot, slots))
        seed = _seed(self.seed, epoch, self.rank, worker, _SAMPLE_SHUFFLE)
        if per_pass <= self.bufsize:
            return self._permute_passes(samples, per_pass, np.random.default_rng(seed))
        first, rest = (int(x) for x in seed.generate_state(2, np.uint64))
        if self.batches is None:
            return wds.shuffle(self.bufsize, initial=self.initial, seed=first)(samples)
        batch_size, length = self.batches
        needed = batch_size * len(range(worker, length, _worker()[1]))
        return chain(
            wds.shuffle(self.bufsize, initial=self.initial, seed=first)(islice(samples, needed)),
            wds.shuffle(self.bufsize, initial=self.initial, seed=rest)(samples),
        )

    @staticmethod
    def _permute_passes(samples, per_pass: int, rng: np.random.Generator):
        while True:
            chunk = list(islice(samples, per_pass))
            if not chunk:
                return
            yield from (chunk[i] for i in rng.permutation(len(chunk)))


class _Decoded:
    """Stage 3: ``codec.decode`` on every sample. In training (``shards`` given) samples it
    leaves out are skipped - but a slot that skips a whole pass would cycle forever, so that
    raises; evaluation must keep every sample (its batch counts are known in advance)."""

    def __init__(self, codec, shards=None, seed=0, epoch: Epoch = 0, rank=0, world_size=1):
        self.codec, self.shards, self.seed, self.epoch = codec, shards, seed, epoch
        self.rank, self.world_size = rank, world_size

    def __call__(self, samples):
        decode = self.codec.decode
        per_pass = None
        if self.shards is not None:
            slot, slots, _ = _slot(self.rank, self.world_size)
            tasks = _train_tasks(self.shards, self.seed, int(self.epoch), slot, slots)
            per_pass = sum(t.samples for t in tasks)
        missed = 0
        for sample in samples:
            item = decode(sample)
            if item is not None:
                missed = 0
                yield item
            elif per_pass is None:
                raise RuntimeError(f"{type(self.codec).__name__} left out an evaluation sample")
            else:
                missed += 1
                if missed > per_pass:
                    raise DatasetError(
                        f"a whole pass over shards {', '.join(t.name for t in tasks)} gave no "
                        f"sample {type(self.codec).__name__} can train on"
                    )


class _TrainBatches:
    """Stage 4 (train): full batches of ``codec.collate``, with the slot's per-epoch rng.

    Each loader worker stops after its share of the epoch's ``length`` batches (the DataLoader
    takes batches from its workers in turn, so worker ``w`` delivers batches ``w, w + W, ...``):
    the epoch ends when the streams do, and no batch is decoded only to be dropped.
    """

    def __init__(
        self, codec, batch_size, seed, epoch, rank, world_size, length, slots=None
    ) -> None:
        self.codec, self.batch_size = codec, batch_size
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.length = length
        self.rng: np.random.Generator | None = None
        self.slots: SlotTable | None = slots  # reused batch buffers (loader processes only)
        self.pool: WorkerSlots | None = None

    def __call__(self, samples):
        worker, workers = _worker()
        seed = _seed(self.seed, int(self.epoch), self.rank, worker, _WINDOWS)
        self.rng = np.random.default_rng(seed)
        if self.pool is None and self.slots is not None and torch.utils.data.get_worker_info():
            self.pool = WorkerSlots(self.slots, worker)
        return self._batches(iter(samples), len(range(worker, self.length, workers)))

    def _batches(self, samples: Iterator, count: int):
        # Not wds.batched: it reads one sample past each batch before yielding it, which at
        # the epoch's end starts the shuffle's next buffer for nothing.
        for _ in range(count):
            items = list(islice(samples, self.batch_size))
            if len(items) < self.batch_size:
                return
            yield self.collate(items)

    def collate(self, items):
        if self.pool is None:
            return self.codec.collate(items, self.rng)
        with self.pool.lending():
            batch = self.codec.collate(items, self.rng)
        return self.pool.wrap(batch)


class _EvalBatches:
    """Stage 3 (evaluation): ``codec.collate`` on batches of the slot's share (the last one
    may be smaller)."""

    def __init__(self, codec, batch_size) -> None:
        self.codec, self.batch_size = codec, batch_size

    def __call__(self, samples):
        return wds.batched(self.batch_size, collation_fn=self.collate, partial=True)(samples)

    def collate(self, items):
        return self.codec.collate(items, None)


# --------------------------------------------------------------------------- loaders
class ShardLoader:
    """An epoch of batches with a known length; stops after exactly ``len(self)`` batches.

    Without persistent workers each ``iter()`` starts fresh loader processes, stopped when the
    epoch ends (or the loop is left early); :class:`TrainLoader` keeps them for every epoch.
    A stream that ends short raises instead of silently unbalancing DDP.
    """

    def __init__(
        self, loader: wds.WebLoader, length: int, on_start: Callable[[], object] | None = None
    ) -> None:
        self.loader = loader
        self.length = length
        self.on_start = on_start  # run by each iter(), before the loader's streams start

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if self.on_start is not None:
            self.on_start()
        iterator = iter(self.loader)
        delivered = 0
        try:
            for batch in islice(iterator, self.length):
                delivered += 1
                yield batch
        except DatasetError as exc:
            raise DatasetError(_one_line(exc)) from None
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()  # drops the DataLoader iterator, which stops its worker processes
        if delivered != self.length:
            raise RuntimeError(f"loader delivered {delivered} of {self.length} batches")


def _one_line(exc: DatasetError) -> str:
    """The original message of a DatasetError a loader process raised: torch re-raises it as
    ``DatasetError("Caught DatasetError in DataLoader worker process 0.\\nOriginal Traceback
    ...\\nconvplat.errors.DatasetError: <message>")``; users get ``<message>``."""
    text = str(exc)
    if not text.startswith("Caught "):
        return text
    last = text.rstrip().rsplit("\n", 1)[-1]
    return last.split("DatasetError: ", 1)[-1]


def _web_loader(
    pipeline, num_workers: int, pin_memory: bool, persistent: bool = False
) -> wds.WebLoader:
    return wds.WebLoader(
        pipeline,
        batch_size=None,  # the pipeline batches inside the workers
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=persistent and num_workers > 0,
    )


def _check_common(batch_size, rank, world_size, num_workers) -> int:
    if batch_size < 1:
        raise ConfigError(f"batch size: expected >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank: expected 0..{world_size - 1} of {world_size}, got {rank}")
    workers = default_num_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ConfigError(f"num_workers: expected >= 0, got {workers}")
    return workers


class TrainLoader:
    """Training batches for every epoch from one set of loader processes.

    Build it once per run and iterate ``loader.epoch(e)`` for each epoch: the processes stay
    up between epochs (``persistent_workers``) and read the epoch number from one shared-memory
    integer, so an epoch costs no fork, no worker start-up and no re-import. ``epoch(e)``
    yields exactly the batches :func:`train_loader` with ``epoch=e`` yields. Arguments: see
    :func:`train_loader`; ``codec`` replaces the classification crops (``crop_size`` is then
    unused) with another :class:`SampleCodec`, whose ``count`` sets the epoch's length.
    ``reuse_buffers`` (default): loader processes write batches into shared-memory buffers
    they reuse once the batches using them are dropped (:mod:`convplat.training.slots`);
    ``loader.slots.usage()`` counts reused and fresh ones.
    """

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int | None = None,
        seed: int = 0,
        crop_size: int = 224,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        drop_last: bool = True,
        pin_memory: bool = False,
        persistent: bool = True,
        codec: SampleCodec | None = None,
        reuse_buffers: bool = True,
    ) -> None:
        shard_set = ShardSet.open(shard_dir)
        workers = _check_common(batch_size, rank, world_size, num_workers)
        codec = codec or RandomCrops(crop_size, shard_set.size)
        shards = shard_set.shards("train")
        count = codec.count(shard_set, "train")
        self.length = train_batches(count, batch_size, world_size, drop_last)
        # Shared before the workers fork, so set_epoch reaches them without a restart.
        self.current = torch.zeros((), dtype=torch.int64).share_memory_()
        epoch = self.current
        # Loader processes write batches into reused shared-memory buffers (slots.py).
        self.slots = SlotTable(workers) if workers > 0 and reuse_buffers else None
        pipeline = wds.DataPipeline(
            _TrainSamples(shard_set, shards, seed, epoch, rank, world_size, codec.suffixes),
            _SlotShuffle(  # before decode
                shuffle_buffer,
                shards,
                seed,
                epoch,
                rank,
                world_size,
                initial=batch_size,
                batches=(batch_size, self.length),
            ),
            _Decoded(codec, shards, seed, epoch, rank, world_size),
            _TrainBatches(
                codec, batch_size, seed, epoch, rank, world_size, self.length, self.slots
            ),
        )
        self.loader = _web_loader(pipeline, workers, pin_memory, persistent)

    def __len__(self) -> int:
        return self.length

    def epoch(self, epoch: int) -> ShardLoader:
        """The batches of ``epoch``; the shared epoch is set when iteration starts, so epochs
        may be asked for in any order (one iteration at a time)."""
        return ShardLoader(self.loader, self.length, lambda: self.current.fill_(int(epoch)))


def train_loader(
    shard_dir: str | os.PathLike,
    *,
    batch_size: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    seed: int = 0,
    crop_size: int = 224,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    drop_last: bool = True,
    pin_memory: bool = False,
    codec: SampleCodec | None = None,
) -> ShardLoader:
    """One training epoch on one rank: exactly ``num_batches(...)`` full batches.

    Shards are shuffled with ``(seed, epoch)`` and dealt to the ``world_size x workers``
    slots (:func:`assign_shards`); each slot cycles over its shards (reshuffled per pass),
    shuffles raw samples in a buffer of ``shuffle_buffer`` seeded by
    ``(seed, epoch, rank, worker)``, then decodes and crops a random ``crop_size`` window
    (AlexNet §4.1) into uint8 batches. Batches per epoch = ``train_count // (world_size *
    batch_size)``; ``drop_last=False`` rounds up instead (the last batches are filled from
    the cycling streams). The same arguments give the same batches. For many epochs,
    :class:`TrainLoader` gives the same batches from loader processes kept across epochs.

    Yields ``(images uint8 (B, crop, crop, 3), labels int64 (B,), windows int64 (B, 3))``,
    or with ``codec`` what its ``collate`` makes.
    """
    loader = TrainLoader(
        shard_dir,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        seed=seed,
        crop_size=crop_size,
        shuffle_buffer=shuffle_buffer,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent=False,
        codec=codec,
    )
    return loader.epoch(epoch)


def eval_loader(
    shard_dir: str | os.PathLike,
    split: str = "val",
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    crop_size: int = 224,
    mode: str = "center",
    keys: bool = False,
    pin_memory: bool = False,
    codec: SampleCodec | None = None,
    limit: int = 0,
) -> ShardLoader:
    """Every sample of ``split`` exactly once over all ranks: no padding, no duplicates.

    Modes: ``center`` yields the central ``crop_size`` crops; ``ten-crop`` the whole ``S x S``
    frame (for :class:`~convplat.training.augment.TenCrop`); ``full`` the decoded image as it
    is (for cropped shards the same as ten-crop; for ``--no-crop`` shards a batch of mixed
    sizes is a list of ``(H, W, 3)`` tensors). Windows are the images' places in the mean
    frame (flip 0). A rank or worker whose share is empty yields nothing; every worker's last
    batch may be smaller. ``keys=True`` appends the list of sample keys to each batch.
    ``codec`` replaces the modes with another :class:`SampleCodec` (``mode``, ``crop_size``
    and ``keys`` are then unused); ``limit`` reads only the split's first ``limit`` samples
    (manifest order; still each exactly once, whatever the ranks and workers).
    """
    if codec is None and mode not in EVAL_MODES:
        raise ConfigError(f"evaluation mode: expected one of {', '.join(EVAL_MODES)}, got {mode!r}")
    if limit < 0:
        raise ConfigError(f"limit: expected >= 0, got {limit}")
    shard_set = ShardSet.open(shard_dir)
    workers = _check_common(batch_size, rank, world_size, num_workers)
    codec = codec or EvalCrops(mode, crop_size, shard_set.size, keys)
    shards = shard_set.shards(split)
    length = eval_batches(shards, batch_size, world_size, rank, workers, limit)
    pipeline = wds.DataPipeline(
        _EvalSamples(shard_set, shards, rank, world_size, codec.suffixes, limit),
        _Decoded(codec),
        _EvalBatches(codec, batch_size),
    )
    return ShardLoader(_web_loader(pipeline, workers, pin_memory), length)


# --------------------------------------------------------------------------- re-exports
