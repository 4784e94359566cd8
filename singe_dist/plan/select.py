"""Global selection: which channels to remove to reach a MACs or parameter budget.

Relevances of all groups are in the same units (an estimated loss increase for SInGE), so channels
are ranked globally, least relevant first, optionally per unit of cost saved. Removal proceeds in
that order, skipping channels that would break a constraint, until the budget is met; the exact
cost model makes it stop at the first channel that reaches the target, so the budget is met within
one channel's cost.

*Allocation* (how many channels each group loses) is a choice separate from the criterion (which
channels): ``global`` ranks all channels of all groups together, optionally with a cap on the
fraction any one group may lose (``max_remove_fraction``); ``uniform`` removes the same fraction of
every group (within one removal unit) and lets the criterion choose only within each group. A
criterion that scores channels one at a time can strip a layer whose channels are individually
redundant but jointly essential; ``uniform`` and the cap keep that from happening. Ties are broken by (relevance, group id, channel index) so every rank of a
distributed run takes the same decision from the same scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from singe_dist.errors import SingeError
from singe_dist.plan.limits import DEFAULT_ALLOCATION, check_allocation, check_limit, check_metric
from singe_dist.plan.cost import CostModel


@dataclass(frozen=True)
class Constraints:
    """Limits on what a single group may lose.

    ``min_keep_fraction`` and ``min_keep`` bound the channels kept per group (both apply, relative
    to the group's width in the *original* model when ``original_sizes`` is given); ``round_to``
    keeps every pruned group's width a multiple of that number (8 suits GPU tensor cores).
    """

    min_keep_fraction: float = 0.1
    min_keep: int = 1
    round_to: int = 1
    max_remove_fraction: float = 1.0  # at most this fraction of a group's original width removed

    def __post_init__(self) -> None:
        for key in ("max_remove_fraction", "min_keep_fraction", "min_keep", "round_to"):
            check_limit(key, getattr(self, key))


@dataclass(frozen=True)
class Policy:
    """How channels are chosen, whatever their scores: one object instead of five loose arguments.

    ``metric`` is what the budget counts (``macs`` or ``params``); ``constraints`` bound what one group
    may lose; ``allocation`` decides how many channels each group loses (module docstring);
    ``normalize_by_cost`` ranks global units by relevance per unit of cost saved; ``original_sizes``
    (group id -> width in the unpruned model) makes the limits relative to the original widths, so a
    group does not lose its floor again at every step.
    """

    metric: str = "macs"
    constraints: Constraints = Constraints()
    allocation: str = DEFAULT_ALLOCATION
    normalize_by_cost: bool = False
    original_sizes: Mapping[str, int] | None = None
    group_weights: Mapping[str, float] | None = None  # allocation=search: one candidate's (engine/search.py)

    def __post_init__(self) -> None:
        check_metric(self.metric)
        check_allocation(self.allocation, self.normalize_by_cost)


@dataclass
class Selection:
    """The channels chosen per group (indices in the current model) and the predicted footprint."""

    channels: dict[str, list[int]] = field(default_factory=dict)
    macs: int = 0
    params: int = 0
    target: float = 0.0
    last_unit_cost: int = 0
    reached: bool = False


def _units(group_id: str, scores: torch.Tensor, round_to: int, max_remove: int) -> list[tuple[float, list[int]]]:
    """Split a group's channels into removal units, least relevant first.

    Without rounding every channel is a unit. With ``round_to = r`` the first unit brings the width
    down to a multiple of r and every later unit removes r channels, so any prefix of the units
    leaves a width that is a multiple of r.
    """
    order = sorted(range(len(scores)), key=lambda k: (float(scores[k]), k))
    size = len(scores)
    units: list[tuple[float, list[int]]] = []
    start = 0
    first = size % round_to if round_to > 1 else 1
    step = first or round_to
    while start + step <= max_remove:
        members = order[start : start + step]
        units.append((float(sum(float(scores[k]) for k in members)), members))
        start += step
        step = round_to if round_to > 1 else 1
    return units


class Allocation:
    """How many channels each group loses: the order in which removal units of all groups are taken.

    :meth:`key` orders one unit (lower goes first); ties are broken by (group id, first channel) so every
    rank takes the same decision. ``prune.allocation`` names one of :data:`ALLOCATIONS`.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def key(self, unit_score: float, members: list[int], gone: int, reference: int, unit_cost: int,
            gid: str = "") -> float:
        raise NotImplementedError


class Uniform(Allocation):
    """Every group loses the same fraction of its original width; scores only choose inside a group.

    ``policy.group_weights`` (a candidate of ``allocation=search``, :func:`candidate_weights`) scales each
    group's share: a group of weight 1.5 loses its channels 1.5 times as fast; no weights, or all 1, is uniform.
    """

    def key(self, unit_score: float, members: list[int], gone: int, reference: int, unit_cost: int,
            gid: str = "") -> float:
        return gone / (reference * (self.policy.group_weights or {}).get(gid, 1.0))


class Global(Allocation):
    """All groups' units by score: per channel, or per unit of cost saved (``normalize_by_cost``)."""

    def key(self, unit_score: float, members: list[int], gone: int, reference: int, unit_cost: int,
            gid: str = "") -> float:
        if self.policy.normalize_by_cost:
            return unit_score / max(1, unit_cost * len(members))
        return unit_score / len(members)


ALLOCATIONS: dict[str, type[Allocation]] = {"uniform": Uniform, "global": Global, "search": Uniform}  # plan/limits.py


def candidate_weights(group_ids: Sequence[str], count: int, spread: float, seed: int) -> list[dict[str, float]]:
    """``count`` width candidates for ``allocation=search``: the first is uniform (every weight 1), the others
    draw each group's weight from U[1 - spread, 1 + spread], reproducibly from ``seed`` (every rank draws the
    same). The budget and every group's limits hold for any weights: :func:`select_channels` applies them."""
    gen = torch.Generator().manual_seed(seed)
    ids = sorted(group_ids)
    out = [{gid: 1.0 for gid in ids}]
    for _ in range(count - 1):
        draw = 1.0 + spread * (2 * torch.rand(len(ids), generator=gen, dtype=torch.float64) - 1)
        out.append({gid: float(w) for gid, w in zip(ids, draw)})
    return out


def select_channels(
    scores: Mapping[str, torch.Tensor],
    cost: CostModel,
    target: float,
    policy: Policy = Policy(),
) -> Selection:
    """Choose channels to remove until the model's ``policy.metric`` ('macs' or 'params') is <= ``target``.

    ``scores`` maps group id to one relevance per channel of the current model (higher = keep); the
    policy's allocation (:data:`ALLOCATIONS`) orders the removal units of all groups.
    """
    metric = policy.metric
    unknown = [g for g in scores if g not in cost._groups_of_layer]  # noqa: SLF001
    if unknown:
        raise SingeError(f"relevance names group {unknown[0]!r}, which the model does not have")
    selection = Selection(target=target, macs=cost.macs, params=cost.params)
    if cost.footprint().get(metric) <= target:
        selection.reached = True
        return selection
    allocation = ALLOCATIONS[policy.allocation](policy)
    per_channel = cost.channel_costs()
    candidates = [c for gid in sorted(scores)
                  for c in _group_candidates(gid, scores[gid], policy, allocation, per_channel[gid][0 if metric == "macs" else 1])]
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    # units of one group must go in order (each unit assumes the previous ones are gone)
    taken: dict[str, int] = {}
    pending = {gid: [c for c in candidates if c[1] == gid] for gid in scores}
    for _key, gid, _first, _members in candidates:
        unit = pending[gid][taken.get(gid, 0)]  # next unit of this group in its own order
        taken[gid] = taken.get(gid, 0) + 1
        saved_macs, saved_params = cost.remove(gid, len(unit[3]))
        selection.channels.setdefault(gid, []).extend(unit[3])
        selection.last_unit_cost = saved_macs if metric == "macs" else saved_params
        if cost.footprint().get(metric) <= target:
            selection.reached = True
            break
    selection.macs, selection.params = cost.macs, cost.params
    for gid in selection.channels:
        selection.channels[gid] = sorted(selection.channels[gid])
    return selection


def _group_candidates(gid: str, scores: torch.Tensor, policy: Policy, allocation: Allocation,
                      unit_cost: int) -> list[tuple[float, str, int, list[int]]]:
    """A group's removal units the constraints allow, each as (allocation key, group, first channel, channels)."""
    s = scores.detach().double().cpu()
    if not torch.isfinite(s).all():
        raise SingeError(f"relevance of group {gid!r} is not finite")
    constraints, size = policy.constraints, len(s)
    reference = (policy.original_sizes or {}).get(gid, size)
    keep = max(constraints.min_keep, math.ceil(constraints.min_keep_fraction * reference))
    if constraints.round_to > 1:
        keep = max(constraints.round_to, math.ceil(keep / constraints.round_to) * constraints.round_to)
    removed_before = max(0, reference - size)
    cap = math.floor(constraints.max_remove_fraction * reference + 1e-9) - removed_before
    gone, candidates = removed_before, []
    for unit_score, members in _units(gid, s, constraints.round_to, max(0, min(size - keep, cap))):
        gone += len(members)
        candidates.append((allocation.key(unit_score, members, gone, reference, unit_cost, gid), gid, min(members), members))
    return candidates
