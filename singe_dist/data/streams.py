"""The three streams a pruning job reads, built from the job's data config for one rank.

- training: endless, resampled, augmented (fine-tuning never runs dry on any rank);
- calibration: fresh batches for each pruning step, with the evaluation transform (relevance is
  measured on the function as deployed, without augmentation noise), drawn from the training shards;
- validation: this rank's exact share of one pass (the union over ranks is every sample once).

Every stream is a deterministic function of (seed, step, rank), so a resumed run reads the same data
as an uninterrupted one.

Shards that disappear mid-run (storage trouble, a cleanup job): a training shard is dropped from the
streams built after that, with a warning, and counted once in :meth:`DataStreams.skipped` (within a
phase already reading it, each draw of the missing file is a broken shard, skipped and counted); when
no training shard is left, the job stops with one line. Validation is never silently shortened: the
pruning loop compares every evaluation's sample count with the baseline's and stops with one line
naming the vanished shard (:meth:`DataStreams.vanished`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import torch

from singe_dist import interrupt
from singe_dist.config import DataConfig
from singe_dist.data.shard_samples import SkipCounter
from singe_dist.data.shards import ShardLoader, expand_shards, shard_loader
from singe_dist.data.transforms import eval_transform, train_transform
from singe_dist.errors import SingeError

log = logging.getLogger(__name__)


@dataclass
class DataStreams:
    config: DataConfig
    num_classes: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    training: bool = True  # False: validation only (``singe-dist eval``), the training shards are not needed

    def __post_init__(self) -> None:
        c = self.config
        self._train_tf = train_transform(c.image_size, c.mean, c.std, scale=(c.crop_scale_min, 1.0), hflip=c.hflip)
        self._eval_tf = eval_transform(c.image_size, c.resize_size, c.mean, c.std)
        self._loaders: dict[str, ShardLoader] = {}  # the live loader of each role
        self._skipped_before = 0  # skips counted by loaders already replaced
        self._urls: dict[str, list[str]] = {}  # role pattern -> the shards it named at start-up
        self._dropped: set[str] = set()  # training shards that disappeared and are no longer read
        if self.training:  # the training shards as they are now: missing ones fail here, vanished ones later warn
            self._shards(c.train)
        # build the validation loader now: a bad pattern or label fails at start-up, not after hours
        self._val = self._loader("val", self._shards(c.val), "eval", c.eval_batch_size, self._eval_tf, self.seed)

    def _shards(self, pattern: str) -> list[str]:
        """The shards of ``pattern`` as first expanded (all present then), cached."""
        if pattern not in self._urls:
            self._urls[pattern] = expand_shards(pattern)
        return self._urls[pattern]

    def _present_training_shards(self) -> list[str]:
        """The training shards still there; vanished ones are dropped with a warning, or one line if none is left."""
        urls = self._shards(self.config.train)
        gone = [url for url in urls if _vanished(url)]
        for url in gone:
            if url not in self._dropped:
                self._dropped.add(url)
                log.warning("training shard %s has disappeared: it is skipped from now on (%d of %d shards left)",
                            url, len(urls) - len(gone), len(urls))
        if len(gone) == len(urls):
            raise SingeError(f"all {len(urls)} training shards have disappeared during the run (the first is "
                             f"{urls[0]}): restore them and continue with --resume")
        return [url for url in urls if url not in gone]

    def vanished(self, role: str) -> list[str]:
        """Local shards of ``role`` ("train" or "val") that existed at start-up and are gone now."""
        pattern = self.config.train if role == "train" else self.config.val
        return [url for url in self._urls.get(pattern, []) if _vanished(url)]

    def _loader(self, role: str, urls, mode: str, batch: int, transform, seed: int) -> ShardLoader:  # noqa: ANN001
        loader = shard_loader(
            urls, mode=mode, num_classes=self.num_classes, batch_size=batch, num_workers=self.config.num_workers,
            transform=transform, rank=self.rank, world_size=self.world_size, seed=seed,
            shuffle_buffer=self.config.shuffle_buffer, pin_memory=torch.cuda.is_available(),
        )
        old = self._loaders.get(role)
        if old is not None:
            self._skipped_before += _count(old.skips)
        self._loaders[role] = loader
        return loader

    def train(self, step: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless augmented training batches for phase ``step``; ``skip`` batches already consumed."""
        loader = self._loader("train", self._present_training_shards(), "train", self.config.batch_size,
                              self._train_tf, self.seed * 100_003 + step)
        it = iter(loader)
        for _ in range(skip):  # a resume deep into a long phase reads many batches before its first step
            interrupt.check()
            next(it)
        return it

    def calibration(self, step: int, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``batches`` fresh un-augmented training batches for pruning step ``step``."""
        loader = self._loader("calibration", self._present_training_shards(), "train", self.config.batch_size,
                              self._eval_tf, self.seed * 100_003 + 50_000 + step)
        it = iter(loader)
        return [next(it) for _ in range(batches)]

    def val(self) -> ShardLoader:
        return self._val

    def skipped(self) -> int:
        """Corrupt samples, broken shards and vanished training shards skipped so far by this rank's streams."""
        return (self._skipped_before + sum(_count(loader.skips) for loader in self._loaders.values())
                + (len(self._dropped) if self.rank == 0 else 0))  # every rank drops the same shards: count once


def _count(skips: SkipCounter) -> int:
    return skips.samples + skips.shards


def _vanished(url: str) -> bool:
    """A local shard that is not there (remote ones cannot be checked cheaply: their reads fail instead)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        return False
    return not os.path.isfile(parsed.path if parsed.scheme == "file" else url)
