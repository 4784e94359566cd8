"""The three streams a pruning job reads, built from the job's data config for one rank.

- training: endless, resampled, augmented (fine-tuning never runs dry on any rank);
- calibration: fresh batches for each pruning step, with the evaluation transform (relevance is
  measured on the function as deployed, without augmentation noise), drawn from the training shards;
- validation: this rank's exact share of one pass (the union over ranks is every sample once).

Every stream is a deterministic function of (seed, step, rank), so a resumed run reads the same data
as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from singe_dist.config import DataConfig
from singe_dist.data.shards import ShardLoader, SkipCounter, shard_loader
from singe_dist.data.transforms import eval_transform, train_transform


@dataclass
class DataStreams:
    config: DataConfig
    num_classes: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        c = self.config
        self._train_tf = train_transform(c.image_size, c.mean, c.std, scale=(c.crop_scale_min, 1.0), hflip=c.hflip)
        self._eval_tf = eval_transform(c.image_size, c.resize_size, c.mean, c.std)
        self._loaders: dict[str, ShardLoader] = {}  # the live loader of each role
        self._skipped_before = 0  # skips counted by loaders already replaced
        # build the validation loader now: a bad pattern or label fails at start-up, not after hours
        self._val = self._loader("val", c.val, "eval", c.eval_batch_size, self._eval_tf, self.seed)

    def _loader(self, role: str, urls: str, mode: str, batch: int, transform, seed: int) -> ShardLoader:  # noqa: ANN001
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
        loader = self._loader("train", self.config.train, "train", self.config.batch_size, self._train_tf,
                              self.seed * 100_003 + step)
        it = iter(loader)
        for _ in range(skip):
            next(it)
        return it

    def calibration(self, step: int, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``batches`` fresh un-augmented training batches for pruning step ``step``."""
        loader = self._loader("calibration", self.config.train, "train", self.config.batch_size, self._eval_tf,
                              self.seed * 100_003 + 50_000 + step)
        it = iter(loader)
        return [next(it) for _ in range(batches)]

    def val(self) -> ShardLoader:
        return self._val

    def skipped(self) -> int:
        """Corrupt samples and broken shards skipped so far by this rank's streams."""
        return self._skipped_before + sum(_count(loader.skips) for loader in self._loaders.values())


def _count(skips: SkipCounter) -> int:
    return skips.samples + skips.shards
