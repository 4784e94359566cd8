"""``prune.allocation: search``: layer widths searched per step, the candidates split across the ranks.

EagleEye (Li et al. 2020) searches the widths a pruned network keeps instead of fixing them by a rule:
sample candidate width vectors that meet the budget, prune each, re-estimate BatchNorm and score it on
held-out batches. Here a candidate is a weight per group (:func:`~singe_dist.plan.select.candidate_weights`;
the first is uniform) that scales the group's share of the removal; :func:`select_channels` turns it into
channels within the budget and every group's limits, the job's criterion choosing inside each group.

Rank r scores candidates r, r + world, ...; one all-reduce of the score vector gives every rank all the
scores, so every rank picks the same winner (the plan-hash check after the removal confirms it). The
candidates, the data each rank scores on and the tie-break (lowest index) are deterministic, so a step
resumed from its checkpoint searches to the same winner.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from singe_dist.config import PruneConfig
from singe_dist.engine.train import eval_sums, recalibrate_batchnorm, result_from_sums
from singe_dist.plan.cost import CostModel
from singe_dist.plan.plan import apply_step
from singe_dist.plan.select import Policy, candidate_weights, select_channels
from singe_dist.relevance.groups import ChannelGroup

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def search_policy(model: nn.Module, groups: Sequence[ChannelGroup], scores: Mapping[str, torch.Tensor],
                  input_size: tuple[int, int, int], target: float, policy: Policy, cfg: PruneConfig,
                  batches: tuple[Batches, Batches], seed: int,
                  share: tuple[int, int] = (0, 1), all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  log: Callable[[str], None] = lambda _m: None) -> Policy:
    """The winning candidate's policy. ``batches``: (BatchNorm re-estimation, held-out scoring)."""
    rank, world = share
    candidates = candidate_weights([g.id for g in groups], cfg.search_candidates, cfg.search_spread, seed)
    values = torch.zeros(len(candidates), dtype=torch.float64)
    best = float("-inf")
    for done, i in enumerate(range(rank, len(candidates), world), 1):
        candidate = dataclasses.replace(policy, group_weights=candidates[i])
        values[i] = score_candidate(model, groups, scores, input_size, target, candidate, batches, cfg.search_score)
        best = max(best, float(values[i]))
        log(f"      search: {done}/{len(range(rank, len(candidates), world))} of this rank's candidates "
            f"(#{i + 1}: {cfg.search_score} score {values[i]:.4f}; best so far {best:.4f})")
    if all_reduce is not None:
        values = all_reduce(values)  # each candidate scored by exactly one rank: the sum is every score
    winner = int(torch.argmax(values))  # the first of equal scores: every rank picks the same
    log(f"      search: candidate {winner + 1} of {len(candidates)} wins"
        + (" (uniform)" if winner == 0 else "") + f", score {values[winner]:.4f}")
    return dataclasses.replace(policy, group_weights=candidates[winner])


def score_candidate(model: nn.Module, groups: Sequence[ChannelGroup], scores: Mapping[str, torch.Tensor],
                    input_size: tuple[int, int, int], target: float, policy: Policy,
                    batches: tuple[Batches, Batches], score: str) -> float:
    """A copy of ``model`` pruned by ``policy``, its BatchNorm re-estimated, scored on the held-out batches:
    minus the loss, or the top-1 (higher is better either way)."""
    bn, held_out = batches
    result = result_from_sums(eval_sums(prune_candidate(model, groups, scores, input_size, target, policy, bn),
                                        held_out))
    return result.top1 if score == "top1" else -result.loss


def prune_candidate(model: nn.Module, groups: Sequence[ChannelGroup], scores: Mapping[str, torch.Tensor],
                    input_size: tuple[int, int, int], target: float, policy: Policy, bn: Batches) -> nn.Module:
    """A copy of ``model`` pruned by ``policy`` to ``target``, its BatchNorm re-estimated on ``bn`` (if any)."""
    selection = select_channels(scores, CostModel(model, groups, input_size), target, policy)
    pruned = copy.deepcopy(model)
    if selection.channels:
        apply_step(pruned, selection.channels, input_size)
    if bn:
        recalibrate_batchnorm(pruned, bn)
    return pruned
