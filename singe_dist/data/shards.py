"""Read ImageNet-style webdataset tar shards: every sample exactly once for evaluation, endless for training.

A sample is one image (key ``jpg``, ``jpeg``, ``png`` or ``webp``) and its integer label (key ``cls``),
the layout of the public ImageNet webdataset exports. Local shards are expanded and checked at
start-up; ``pipe:``, ``s3://``, ``gs://``, ``http(s)://`` URLs go to webdataset unchanged (its
``gopen`` opens them: ``gs://`` through gsutil, ``http(s)://`` through curl; webdataset 1.0 has no
``s3://`` opener, so S3 shards are read as ``pipe:aws s3 cp s3://bucket/train-000000.tar -``).

**Evaluation** must count every sample once, over all ranks and DataLoader workers together.
Splitting by whole shards (``split_by_node`` then ``split_by_worker``) cannot: with fewer shards than
rank x worker slots some slots get none, and uneven shard counts leave ranks with duplicates or gaps
depending on padding. So shards are dealt round-robin to the ``world_size x num_workers`` slots in
whole rounds, and each shard of the last, incomplete round is shared by the slots that got no whole
shard, each keeping the samples whose index in the shard is its residue modulo the number of sharers.
Every rank must use the same number of DataLoader workers. Ranks may hold different numbers of
batches; evaluation code must reduce sums and counts after the loop rather than collectively per batch.

**Training** draws shards with replacement (``wds.ResampledShards``), seeded per rank and worker, and
shuffles raw (undecoded, so cheap) samples in a buffer: the stream never ends, so no rank runs dry
before the others.

**Decoding** reads the header with PIL (format check, and PIL's decompression-bomb limit on the
pixel count), then decodes with ``torchvision.io.decode_image`` into a uint8 (3, H, W) RGB tensor, which
is what transforms receive: libjpeg-turbo straight into a tensor, pixel-identical to PIL's decode and
about a quarter cheaper (no PIL image object and RGB copy), and the tensor transforms that follow avoid a
PIL round trip.

**Robustness.** An undecodable image or a shard that breaks off (truncated, unreadable) is skipped,
logged, and counted in a :class:`SkipCounter` that lives in shared memory, so the counts from the
DataLoader worker processes reach the caller. Input that cannot be right (a pattern matching no file,
a sample without ``cls``, a label outside ``[0, num_classes)``) raises :class:`SingeError`, at start-up
for the first sample and for any later one when it is read.
"""

from __future__ import annotations

import functools
import io
import logging
import multiprocessing
import os
import random
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info
from torchvision.io import ImageReadMode, decode_image

from singe_dist.data.transforms import eval_transform, train_transform
from singe_dist.errors import SingeError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_KEY = "cls"
# in training, this many shards in a row without a single readable sample means the data is unusable
MAX_EMPTY_DRAWS = 1000
# what PIL raises on a header it cannot read, and torchvision (RuntimeError) on data it cannot decode
DECODE_ERRORS = (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError)

Mode = Literal["train", "eval"]
log = logging.getLogger(__name__)


class SkipCounter:
    """Corrupt samples and broken shards skipped, cumulative until :meth:`reset`.

    The counts live in a lock-protected shared array: a DataLoader hands the dataset (and this counter
    with it) to its worker processes when it starts them, and their increments are visible here. The
    array comes from the spawn context because a lock made in the fork context cannot be handed to
    spawned workers, while a spawn one works with every start method.
    """

    def __init__(self) -> None:
        self._counts = multiprocessing.get_context("spawn").Array("q", 2)  # [samples, shards]

    def add_sample(self) -> None:
        with self._counts.get_lock():
            self._counts[0] += 1

    def add_shard(self) -> None:
        with self._counts.get_lock():
            self._counts[1] += 1

    @property
    def samples(self) -> int:
        """Samples skipped because their image could not be decoded (or was missing)."""
        return self._counts[0]

    @property
    def shards(self) -> int:
        """Shard reads that broke off (truncated, unreadable), samples before the break kept.

        Training resamples shards, so a broken shard counts once per time it is drawn.
        """
        return self._counts[1]

    def reset(self) -> None:
        with self._counts.get_lock():
            self._counts[0] = self._counts[1] = 0

    def __str__(self) -> str:
        return f"{self.samples} corrupt sample(s) and {self.shards} broken shard(s) skipped"


def split_shard_list(source: str) -> list[str]:
    """The entries of a shard list: separated by commas (outside braces, where a comma separates
    alternatives: ``a-{x,y}.tar``) or by webdataset's ``::``. One entry: ``[source]``."""
    parts, depth, current = [], 0, []
    for char in source:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [entry.strip() for part in parts for entry in part.split("::") if entry.strip()]


def expand_shards(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard URLs from a brace pattern, a list of them (``a.tar,b-{0..3}.tar``, or ``::``-separated) or a
    sequence; local files must all exist (one-line SingeError if not)."""
    pattern = isinstance(source, (str, os.PathLike))
    urls = [url for entry in split_shard_list(os.fspath(source)) for url in wds.shardlists.expand_urls(entry)] \
        if pattern else [os.fspath(url) for url in source]
    if not urls:
        raise SingeError("no shards given")
    local = [url for url in urls if urlparse(url).scheme in ("", "file")]
    missing = [url for url in local if not os.path.isfile(_local_path(url))]
    if len(missing) == len(urls):
        what = f"shard pattern {os.fspath(source)}" if pattern else f"shard list starting with {urls[0]}"
        raise SingeError(f"{what} matches no file")
    if missing:
        raise SingeError(f"{len(missing)} of {len(urls)} shards do not exist, the first is {missing[0]}")
    return urls


def _local_path(url: str) -> str:
    parsed = urlparse(url)
    return parsed.path if parsed.scheme == "file" else url


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values win; otherwise torch.distributed's when it is initialised, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if not 0 <= rank < world_size:
        raise SingeError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


def slot_parts(num_shards: int, slot: int, num_slots: int) -> list[tuple[int, int, int]]:
    """What one of ``num_slots`` readers reads: (shard index, stride, offset) triples.

    The slot keeps the samples of that shard whose index modulo stride is offset. Whole rounds of
    shards are dealt round-robin; each shard of the incomplete last round is split by sample index
    among the slots ``s`` with ``s % rest == its position``. Over all slots, every sample once.
    """
    whole = num_shards - num_shards % num_slots
    parts = [(shard, 1, 0) for shard in range(slot, whole, num_slots)]
    rest = num_shards - whole
    if rest:
        position = slot % rest
        parts.append((whole + position, len(range(position, num_slots, rest)), slot // rest))
    return parts


def _slot(rank: int, world_size: int) -> tuple[int, int]:
    """(this reader's slot, number of slots): one slot per (rank, DataLoader worker)."""
    info = get_worker_info()
    worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
    return rank * workers + worker, world_size * workers


def _eval_parts(urls: list[str], rank: int, world_size: int) -> Iterator[dict[str, Any]]:
    """Pipeline source for evaluation: this slot's share of the shards (see :func:`slot_parts`)."""
    for shard, stride, offset in slot_parts(len(urls), *_slot(rank, world_size)):
        yield {"url": urls[shard], "stride": stride, "offset": offset}


def _slot_seed(rank: int, world_size: int) -> int:
    """Per (rank, worker) seed for ResampledShards, so that every reader draws its own shard sequence."""
    return _slot(rank, world_size)[0]


def _part_samples(url: str, stride: int, offset: int, failures: list[Exception]) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard with index % stride == offset; a read error ends the shard.

    The error is appended to ``failures``. The sample being assembled when the shard broke off is
    incomplete and dropped; all samples before it are kept.
    """

    def note(exn: Exception) -> bool:
        failures.append(exn)
        return False  # stop reading this shard

    for index, sample in enumerate(wds.tarfile_samples([{"url": url}], handler=note)):
        if failures:
            return
        if index % stride == offset:
            yield sample


def _image_key(sample: dict[str, Any]) -> str | None:
    return next((key for key in IMAGE_KEYS if key in sample), None)


def _label(sample: dict[str, Any], num_classes: int) -> int:
    """The sample's ``cls`` as an int in [0, num_classes); a one-line SingeError otherwise."""
    where = f"sample {sample['__key__']!r} of shard {sample['__url__']}"
    if LABEL_KEY not in sample:
        keys = ", ".join(sorted(key for key in sample if not key.startswith("__")))
        raise SingeError(f"{where} has no {LABEL_KEY!r} label key (its keys: {keys})")
    raw = sample[LABEL_KEY]
    try:
        label = int(raw)
    except ValueError:
        raise SingeError(f"{where} has a non-integer {LABEL_KEY!r} label {raw!r}") from None
    if not 0 <= label < num_classes:
        raise SingeError(f"{where} has {LABEL_KEY!r} label {label} outside [0, {num_classes})")
    return label


def _short(exn: Exception) -> str:
    message = re.sub(r"^\S+, \S+\.cpp:\d+, ", "", str(exn.args[0]) if exn.args else "")  # torchvision's source location
    return f"{type(exn).__name__}: {message}"


def _labelled_samples(
    parts: Iterable[dict[str, Any]], skips: SkipCounter, num_classes: int, max_empty_draws: int | None
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: shard parts -> ``{"key", "url", "image" (bytes), "label"}``, skipping broken input.

    A broken shard is counted once, by the slot reading offset 0 of it. A sample with a label but no
    image is what a shard cut at a member boundary ends with, so it is skipped as corrupt, not an error.
    """
    empty_draws = 0
    for part in parts:
        url, offset, failures = part["url"], part.get("offset", 0), []
        kept = 0
        for sample in _part_samples(url, part.get("stride", 1), offset, failures):
            image_key = _image_key(sample)
            if image_key is None:
                skips.add_sample()
                log.warning("skipped sample %r of %s: no image key; %s so far", sample["__key__"], url, skips)
                continue
            kept += 1
            label = _label(sample, num_classes)
            yield {"key": sample["__key__"], "url": url, "image": sample[image_key], "label": label}
        if failures and offset == 0:
            skips.add_shard()
            log.warning("shard %s broke off (%s), samples before it kept; %s so far", url, _short(failures[0]), skips)
        empty_draws = 0 if kept else empty_draws + 1
        if max_empty_draws is not None and empty_draws >= max_empty_draws:
            raise SingeError(f"no readable sample in {empty_draws} shards drawn in a row, the data is unusable ({skips})")


def _shuffled(samples: Iterator[dict[str, Any]], bufsize: int, seed: int, rank: int, world_size: int) -> Iterator:
    """Pipeline stage: wds.shuffle with a per-(seed, rank, worker) generator, reproducible per reader."""
    rng = random.Random(f"{seed}:{_slot(rank, world_size)[0]}")
    return wds.shuffle(bufsize, rng=rng)(samples)


def decode_rgb(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 RGB tensor (3, H, W); raises one of ``DECODE_ERRORS`` if they are not an image."""
    with Image.open(io.BytesIO(data)):  # header only: format, size, and PIL's decompression-bomb check
        pass
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _decoded(samples: Iterable[dict[str, Any]], skips: SkipCounter, transform: Callable) -> Iterator[tuple[Any, int]]:
    """Pipeline stage: decode to an RGB tensor and transform; an undecodable image is skipped and counted."""
    for sample in samples:
        try:
            rgb = decode_rgb(sample["image"])
        except DECODE_ERRORS as exn:
            skips.add_sample()
            log.warning("skipped sample %r of %s: %s; %s so far", sample["key"], sample["url"], _short(exn), skips)
            continue
        yield transform(rgb), sample["label"]


def _check_first_sample(urls: list[str], num_classes: int) -> None:
    """Read the first complete sample in the main process, so that a wrong layout fails at start-up.

    Shards that are broken from their first byte are passed over; if all are, nothing can be read,
    and that is an error too.
    """
    failures: list[Exception] = []
    for url in urls:
        shard_failures: list[Exception] = []
        for sample in _part_samples(url, 1, 0, shard_failures):
            if _image_key(sample) is not None:
                _label(sample, num_classes)
                return
        failures += shard_failures
    reason = f": {_short(failures[0])}" if failures else ""
    raise SingeError(f"no readable sample in any of the {len(urls)} shard(s), the first is {urls[0]}{reason}")


class ShardDataset(wds.DataPipeline):
    """Iterable of ``(transform(image), label)`` from webdataset shards (see the module docstring).

    ``mode="eval"``: this rank's exact share of one pass. ``mode="train"``: an endless resampled,
    shuffled stream; a fresh ``iter()`` restarts the same stream for the same ``seed``.
    ``transform`` receives each image as a uint8 RGB tensor (3, H, W) and defaults to the ImageNet
    train / eval transform at 224 px (:mod:`singe_dist.data.transforms`).
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        num_classes: int,
        mode: Mode,
        transform: Callable[[torch.Tensor], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        skips: SkipCounter | None = None,
    ) -> None:
        if mode not in ("train", "eval"):
            raise SingeError(f"data mode must be 'train' or 'eval', got {mode!r}")
        self.urls = expand_shards(urls)
        self.mode = mode
        self.skips = SkipCounter() if skips is None else skips
        rank, world_size = resolve_rank(rank, world_size)
        _check_first_sample(self.urls, num_classes)
        if transform is None:
            transform = train_transform() if mode == "train" else eval_transform()
        if mode == "train":
            worker_seed = functools.partial(_slot_seed, rank, world_size)
            stages = [
                wds.ResampledShards(self.urls, seed=seed, worker_seed=worker_seed, deterministic=True),
                functools.partial(_labelled_samples, skips=self.skips, num_classes=num_classes,
                                  max_empty_draws=MAX_EMPTY_DRAWS),
                functools.partial(_shuffled, bufsize=shuffle_buffer, seed=seed, rank=rank, world_size=world_size),
            ]
        else:
            stages = [
                functools.partial(_eval_parts, self.urls, rank, world_size),
                functools.partial(_labelled_samples, skips=self.skips, num_classes=num_classes, max_empty_draws=None),
            ]
        super().__init__(*stages, functools.partial(_decoded, skips=self.skips, transform=transform))


class ShardLoader(DataLoader):
    """DataLoader of ``(images (B, 3, H, W) float, labels (B,) int64)`` over a :class:`ShardDataset`.

    A SingeError raised in a worker process reaches the caller as the original one-line SingeError
    (torch would wrap it in the worker's traceback); at the end of a pass the skips of that pass are
    logged as one warning. Skip counts so far: ``loader.skips``.
    """

    dataset: ShardDataset

    @property
    def skips(self) -> SkipCounter:
        return self.dataset.skips

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        samples, shards = self.skips.samples, self.skips.shards
        try:
            yield from super().__iter__()
        except SingeError as exn:
            # the traceback's frames hold the worker iterator in a reference cycle; clearing them
            # stops the workers now rather than at a garbage collection that may run in a forked worker
            traceback.clear_frames(exn.__traceback__)
            message = str(exn).rsplit("SingeError: ", 1)[-1]
        else:
            if (self.skips.samples, self.skips.shards) != (samples, shards):
                log.warning(
                    "this pass over %d shard(s) skipped %d corrupt sample(s) and %d broken shard(s)",
                    len(self.dataset.urls), self.skips.samples - samples, self.skips.shards - shards,
                )
            return
        raise SingeError(message)


def shard_loader(
    urls: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    mode: Mode,
    num_classes: int,
    batch_size: int,
    num_workers: int = 2,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    pin_memory: bool = False,
) -> ShardLoader:
    """Batches of ``(images, labels)`` from shards; see :class:`ShardDataset` for the arguments.

    Training batches are all full (``drop_last``); evaluation keeps the last partial batch so that
    every sample is seen.
    """
    dataset = ShardDataset(
        urls, num_classes=num_classes, mode=mode, transform=transform, rank=rank, world_size=world_size,
        seed=seed, shuffle_buffer=shuffle_buffer,
    )
    return ShardLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, drop_last=mode == "train", pin_memory=pin_memory
    )
