"""Relevance criteria: SInGE (integrated gradients along the removal path) and the baselines.

A criterion is one object (Torch-Pruning's importance is the model): built on its
:class:`~singe_dist.relevance.criterion_config.CriterionConfig`, it says whether it needs data, accumulates
:class:`~singe_dist.relevance.sums.RelevanceSums` over batches (sums that add across ranks exactly)
and finalises them into one score per channel of every group, higher = more relevant = kept.
:func:`score` is the one verb every caller uses (a pruning step, ``singe-dist relevance``,
``prune_one_shot``); the all-reduce is its argument. Your own criterion is a subclass named
``"package.module:Class"`` in ``criterion.name`` (:mod:`singe_dist.relevance.registry`).

SInGE relevance of channel k (design notes, section 2)::

    R_k = L(k removed) - L(k present) ~= - sum_s w_s * E_data[dL/dmu_k](mu_s)

so ``reduce="signed"`` is an estimate, in loss units, of the loss increase its removal causes
(integrated-gradient completeness), comparable across layers. ``reduce="abs"`` averages
``|E_data[dL/dmu_k]|`` along the path. Taylor is ``|E_data[dL/dmu_k]|`` at the single point mu = 1.

``reduce="norm"`` integrates the *sensitivity*, the per-sample gradient's norm over the data,
``sqrt(E_data[(dl_x/dmu_k)^2])``: a channel whose removal helps some samples and hurts others has a
signed mean near zero but a large norm. Its sums hold squares per sample (``RelevanceSums.squared``),
which add across shares exactly like the plain sums; at the single point mu = 1 (Taylor with
``reduce="norm"``) it is the square root of the Fisher pruning criterion (Theis et al. 2018): the same
ranking, unless scores are divided by cost.

``loss="output"`` (with ``reduce="norm"``) differentiates the predictive function itself instead of a
loss: per sample, the squared norm of the gradient of its centred logits ``z - mean(z)`` (the softmax
ignores a shift of all logits), ``sum_c (dz~_c/dmu_k)^2``. It needs no labels, and confident samples,
whose cross-entropy gradient vanishes, still count. Each (sample, class) is one row, so it costs one
row per class: the rows of a sample share their prefix (prefix reuse), and it is refused above
``MAX_OUTPUT_CLASSES`` classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
import torch_pruning as tp
from torch import nn

from singe_dist.errors import SingeError
from singe_dist.relevance.criterion_config import CriterionConfig
from singe_dist.relevance.criterion import Criterion, Scores
from singe_dist.relevance.groups import ChannelGroup
from singe_dist.relevance.paths import (
    Batches,
    channel_path_batch,
    group_path_batch,
    planned_path_sums,
    planned_scores,
    taylor_batch,
    walk,
)
from singe_dist.relevance.registry import make_criterion
from singe_dist.relevance.sums import RelevanceSums, path_points
from singe_dist.relevance.weights import WeightSums, accumulate_weights

AllReduce = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["Criterion", "CriterionConfig", "Magnitude", "Random", "RelevanceSums", "SInGE", "SInGEWeights", "Taylor", "accumulate",
           "compute_relevance", "path_points", "rescore", "score"]


class Magnitude(Criterion):
    """L1/L2 norm of each channel's weights across the whole group (torch-pruning's group magnitude)."""

    def finalize(self, model: nn.Module, groups: Sequence[ChannelGroup], sums: RelevanceSums | None) -> Scores:
        importance = tp.importance.GroupMagnitudeImportance(p=self.config.norm, group_reduction="mean",
                                                            normalizer=None)
        return {g.id: importance(g.tp_group).detach().double().cpu() for g in groups}


class Random(Criterion):
    """Uniform random scores, reproducible from ``criterion.seed`` and the group ids."""

    def finalize(self, model: nn.Module, groups: Sequence[ChannelGroup], sums: RelevanceSums | None) -> Scores:
        gen = torch.Generator().manual_seed(self.config.seed)
        return {g.id: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in sorted(groups, key=lambda g: g.id)}


class _PathCriterion(Criterion):
    """A criterion read from ``dL/dmu`` on calibration data: the points it takes and the rows of a batch."""

    needs_data = True

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def batch_rows(self, channel_share: tuple[int, int]) -> Callable:  # type: ignore[type-arg]
        raise NotImplementedError

    def accumulate(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches,
                   sums: RelevanceSums | None = None, channel_share: tuple[int, int] = (0, 1),
                   progress: object | None = None) -> RelevanceSums:
        """Add the path derivatives of ``batches`` to ``sums`` (a new table when None). ``channel_share =
        (i, n)``: with ``path="channel"``, only the (channel, point) pairs whose index is i modulo n; the
        other shares' sums then complete the table exactly."""
        points, weights = self.points()
        sums = sums or RelevanceSums.empty(groups, points, weights, squared=self.config.reduce == "norm")
        return walk(model, groups, batches, self.config, sums, self.batch_rows(channel_share), progress)

    def finalize(self, model: nn.Module, groups: Sequence[ChannelGroup], sums: RelevanceSums | None) -> Scores:
        if sums is None:
            raise SingeError(f"criterion {self.config.name!r} needs calibration data")
        return sums.finalize(self.reduce)

    @property
    def reduce(self) -> str:
        return self.config.reduce


class SInGE(_PathCriterion):
    """Integrated gradients along the removal path of a group (``path=group``) or of each channel."""

    replans = True

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        return path_points(self.config.steps, self.config.rule)

    def batch_rows(self, channel_share: tuple[int, int]) -> Callable:  # type: ignore[type-arg]
        return group_path_batch if self.config.path == "group" else partial(channel_path_batch, share=channel_share)

    def plan_sums(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches,
                  plan: Mapping[str, Sequence[int]]) -> RelevanceSums:
        return planned_path_sums(model, groups, batches, self.config, plan)


class Taylor(_PathCriterion):
    """The first-order term at mu = 1: ``|E[dL/dmu]|``, or with ``reduce=norm`` the per-sample RMS there
    (the square root of Fisher pruning, SInGE norm's single point)."""

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)

    def batch_rows(self, channel_share: tuple[int, int]) -> Callable:  # type: ignore[type-arg]
        return taylor_batch

    @property
    def reduce(self) -> str:
        return "norm" if self.config.reduce == "norm" else "abs"


class SInGEWeights(Criterion):
    """SInGE's per-weight reading (:mod:`singe_dist.relevance.weights`): the L1 or L2 norm
    (``criterion.norm``) of the integrated-gradient attributions of the weights that read a channel."""

    needs_data = True

    def accumulate(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches,
                   sums: WeightSums | None = None, channel_share: tuple[int, int] = (0, 1),  # type: ignore[override]
                   progress: object | None = None) -> WeightSums:
        if channel_share[1] > 1:
            raise SingeError("criterion singe_weights shares data between ranks, not channels: use split=data")
        return accumulate_weights(model, groups, batches, self.config, sums)

    def finalize(self, model: nn.Module, groups: Sequence[ChannelGroup], sums: WeightSums | None) -> Scores:  # type: ignore[override]
        if sums is None:
            raise SingeError(f"criterion {self.config.name!r} needs calibration data")
        return {gid: torch.stack([a.norm(p=self.config.norm) for a in per_channel])
                for gid, per_channel in sums.attributions().items()}


def score(criterion: Criterion, model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None,
          all_reduce: AllReduce | None = None, channel_share: tuple[int, int] = (0, 1)) -> Scores:
    """One score per channel: the local sums, all-reduced (when given), finalised.

    With ``channel_share = (rank, world)`` (``split=channels``) every rank read the same samples, so the
    reduced counts of samples and loss are divided back by the world size.
    """
    if not criterion.needs_data:
        return criterion.finalize(model, groups, None)
    if batches is None:
        raise SingeError(f"criterion {criterion.config.name!r} needs calibration data")
    sums = criterion.accumulate(model, groups, batches, channel_share=channel_share)
    if all_reduce is not None:
        sums.load_flat(all_reduce(sums.flatten()))
        world = channel_share[1]
        sums.samples //= world
        sums.loss_sum /= world
    return criterion.finalize(model, groups, sums)


def rescore(criterion: Criterion, model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches,
            plan: Mapping[str, Sequence[int]], all_reduce: AllReduce | None = None) -> Scores:
    """The planned channels' shares of the plan's joint removal (``criterion.replan``), all-reduced when
    given (ratios: the same whichever way ranks share the data)."""
    sums = criterion.plan_sums(model, groups, batches, plan)
    if all_reduce is not None:
        sums.load_flat(all_reduce(sums.flatten()))
    return planned_scores(sums, plan)


def accumulate(model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches, config: CriterionConfig,
               sums: RelevanceSums | None = None, channel_share: tuple[int, int] = (0, 1),
               progress: object | None = None) -> RelevanceSums:
    """The sums of ``config``'s criterion on ``batches`` (benchmarks time this part alone)."""
    return make_criterion(config).accumulate(model, groups, batches, sums, channel_share, progress)


def compute_relevance(model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches | None,
                      config: CriterionConfig) -> Scores:
    """:func:`score` in one process, from a config."""
    return score(make_criterion(config), model, groups, batches)
