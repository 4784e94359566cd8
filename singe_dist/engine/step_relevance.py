"""One rank's share of a pruning step's relevance, re-planning and BatchNorm re-estimation.

Every rank scores its own calibration batches (``criterion.split=data``) or its share of the
(channel, point) pairs on the same batches (``split=channels``); sums and counts are all-reduced, so
every rank holds the scores one process would compute on all the data and takes the same decision.
A step's calibration batches are read and decoded once: relevance, re-planning and BN re-estimation
(and greedy sub-steps) read prefixes of the same deterministic stream.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from singe_dist.config import JobConfig
from singe_dist.data.streams import DataStreams
from singe_dist.engine.collective import Collective
from singe_dist.engine.faults import NoFaults
from singe_dist.engine.train import recalibrate_batchnorm
from singe_dist.plan.reconstruct import reconstruct
from singe_dist.plan.removal_check import check_removal
from singe_dist.relevance.criteria import rescore, score
from singe_dist.relevance.groups import ChannelGroup, example_input, find_groups
from singe_dist.relevance.registry import make_criterion

Batches = list[tuple[torch.Tensor, torch.Tensor]]


class StepRelevance:
    """Relevance of a rank's model, all-reduced, on the calibration batches of ``DataStreams``."""

    def __init__(self, config: JobConfig, col: Collective, streams: DataStreams, faults: NoFaults,
                 input_size: tuple[int, int, int], log: Callable[[str], None] = lambda _m: None) -> None:
        self.config, self.col, self.streams, self.faults, self.input_size = config, col, streams, faults, input_size
        self.log = log
        self.removal_checked = False  # the self-check runs before the job's first relevance (also after a resume)
        self.criterion = make_criterion(config.criterion)
        self.split_channels = config.criterion.split == "channels"
        # split=channels: every rank reads the same calibration batches (rank 0 of 1's stream)
        self.relevance_streams = (DataStreams(config.data, config.model.num_classes, 0, 1, config.run.seed)
                                  if self.split_channels else streams)
        self._cache: dict[tuple[int, int], Batches] = {}
        # a step reads prefixes of one stream of this rank's batches: relevance (split=data), BatchNorm
        # re-estimation and a width search's BN + held-out batches. The first read takes the longest, so
        # no batch is decoded twice
        prune = config.prune
        self.step_batches = max(1, config.criterion.calibration_batches if self.criterion.needs_data
                                and not self.split_channels else 0,
                                prune.bn_batches + (prune.search_batches if prune.allocation == "search" else 0),
                                prune.reconstruct_batches)

    def calibration(self, streams: DataStreams, step: int, count: int) -> Batches:
        """The first ``count`` calibration batches of ``step``; only the current step's are kept."""
        key = (id(streams), step)
        cached = self._cache.get(key, [])
        if len(cached) < count:
            cached = streams.calibration(step, max(count, self.step_batches) if streams is self.streams else count)
            self._cache = {k: v for k, v in self._cache.items() if k[1] == step}
            self._cache[key] = cached
        return cached[:count]

    def scores(self, model: nn.Module, step: int) -> tuple[list[ChannelGroup], dict[str, torch.Tensor]]:
        """The dependency groups of ``model`` and one score per channel, identical on every rank."""
        groups = find_groups(model, example_input(model, self.input_size), self.config.model.ignored_layers)
        if not self.removal_checked:  # each rank checks its own first calibration batch: no collective needed
            x = self.calibration(self.streams, step, 1)[0][0].to(next(model.parameters()).device)
            self.log(check_removal(model, groups, x, self.input_size).line())
            self.removal_checked = True
        self.faults.check("relevance", step + 1)
        share = (self.col.rank, self.col.world_size) if self.split_channels else (0, 1)  # channels shared out, or data
        batches = (self.calibration(self.relevance_streams, step, self.config.criterion.calibration_batches)
                   if self.criterion.needs_data else None)
        return groups, score(self.criterion, model, groups, batches, self.col.all_reduce_sum, share)

    def rescore(self, model: nn.Module, groups: list[ChannelGroup], plan: dict[str, list[int]],
                step: int) -> dict[str, torch.Tensor]:
        """The planned channels' shares of the plan's joint removal (``criterion.replan``), all-reduced."""
        batches = self.calibration(self.relevance_streams, step, self.config.criterion.calibration_batches)
        return rescore(self.criterion, model, groups, batches, plan, self.col.all_reduce_sum)

    def reconstruct(self, model: nn.Module, groups: list[ChannelGroup], step: int,
                    channels: dict[str, list[int]]) -> int:
        """Refit the readers of ``channels`` before their removal (``prune.reconstruct_batches``), the normal
        equations all-reduced so every rank sets the same weights; returns the batch forward passes run."""
        batches = self.calibration(self.streams, step, self.config.prune.reconstruct_batches)
        return reconstruct(model, groups, channels, batches, self.col.all_reduce_sum, seed=1009 * step)

    def recalibrate(self, model: nn.Module, step: int) -> None:
        """Re-estimate BatchNorm statistics after a removal (``prune.bn_batches``), identical on every rank."""
        if self.config.prune.bn_batches:
            batches = self.calibration(self.streams, step, self.config.prune.bn_batches)
            recalibrate_batchnorm(model, batches, self.col.all_reduce_sum)
