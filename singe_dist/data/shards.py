"""Read ImageNet-style webdataset tar shards: every sample exactly once for evaluation, endless for training.

This module is the entry: a shard list in, a :class:`ShardDataset` or :class:`ShardLoader` out. Local
shards are expanded and checked at start-up; ``pipe:``, ``s3://``, ``gs://``, ``http(s)://`` URLs go
to webdataset unchanged (its ``gopen`` opens them: ``gs://`` through gsutil, ``http(s)://`` through
curl; webdataset 1.0 has no ``s3://`` opener, so S3 shards are read as
``pipe:aws s3 cp s3://bucket/train-000000.tar -``). A pattern matching no file is a :class:`SingeError`.

**Evaluation** deals the shards to the ``world_size x num_workers`` reader slots so that every sample
is read once over all of them (:mod:`singe_dist.data.shard_slots`, which says why whole-shard
splitting cannot).

**Training** draws shards with replacement (``wds.ResampledShards``), seeded per rank and worker, and
shuffles raw (undecoded, so cheap) samples in a buffer: the stream never ends, so no rank runs dry
before the others.

Reading, label checks, decoding, and skipping and counting broken input are
:mod:`singe_dist.data.shard_samples`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal
from urllib.parse import urlparse

import torch
import webdataset as wds
from torch.utils.data import DataLoader

from singe_dist.data.shard_samples import SkipCounter, check_first_sample, decoded, labelled_samples
from singe_dist.data.shard_slots import eval_parts, reader_slot, resolve_rank, slot_seed
from singe_dist.data.transforms import eval_transform, train_transform
from singe_dist.errors import SingeError

# in training, this many shards in a row without a single readable sample means the data is unusable
MAX_EMPTY_DRAWS = 1000

Mode = Literal["train", "eval"]
log = logging.getLogger(__name__)


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


def _shuffled(samples: Iterator[dict[str, Any]], bufsize: int, seed: int, rank: int, world_size: int) -> Iterator:
    """Pipeline stage: wds.shuffle with a per-(seed, rank, worker) generator, reproducible per reader."""
    rng = random.Random(f"{seed}:{reader_slot(rank, world_size)[0]}")
    return wds.shuffle(bufsize, rng=rng)(samples)


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
        check_first_sample(self.urls, num_classes)
        if transform is None:
            transform = train_transform() if mode == "train" else eval_transform()
        if mode == "train":
            worker_seed = functools.partial(slot_seed, rank, world_size)
            stages = [
                wds.ResampledShards(self.urls, seed=seed, worker_seed=worker_seed, deterministic=True),
                functools.partial(labelled_samples, skips=self.skips, num_classes=num_classes,
                                  max_empty_draws=MAX_EMPTY_DRAWS),
                functools.partial(_shuffled, bufsize=shuffle_buffer, seed=seed, rank=rank, world_size=world_size),
            ]
        else:
            stages = [
                functools.partial(eval_parts, self.urls, rank, world_size),
                functools.partial(labelled_samples, skips=self.skips, num_classes=num_classes, max_empty_draws=None),
            ]
        super().__init__(*stages, functools.partial(decoded, skips=self.skips, transform=transform))


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
