"""One pruning decision: relevance -> global selection under the budget -> structural removal -> plan step."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from singe_dist.errors import SingeError
from singe_dist.plan.cost import CostModel, Footprint, measure
from singe_dist.plan.limits import check_limit, check_metric
from singe_dist.plan.plan import Plan, apply_step
from singe_dist.plan.reconstruct import reconstruct as reconstruct_readers
from singe_dist.plan.select import Policy, Selection, select_channels
from singe_dist.relevance.criterion_config import CriterionConfig
from singe_dist.relevance.criteria import rescore, score
from singe_dist.relevance.groups import ChannelGroup, example_input, find_groups
from singe_dist.relevance.registry import make_criterion


@dataclass(frozen=True)
class Budget:
    """Remove ``remove_fraction`` of the original model's MACs or parameters."""

    metric: str = "macs"
    remove_fraction: float = 0.5

    def __post_init__(self) -> None:
        check_metric(self.metric)
        if not isinstance(self.remove_fraction, (int, float)):
            raise SingeError(f"budget fraction must be in (0, 1), got {self.remove_fraction!r}")
        check_limit("remove_fraction", self.remove_fraction, "budget fraction")

    def target(self, original: Footprint, fraction: float | None = None) -> float:
        """The metric's value to reach, for ``fraction`` removed (default: the whole budget)."""
        f = self.remove_fraction if fraction is None else fraction
        return original.get(self.metric) * (1.0 - f)


def decide_and_remove(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    scores: Mapping[str, torch.Tensor],
    input_size: tuple[int, int, int],
    target: float,
    policy: Policy = Policy(),
    rescore: Callable[[dict[str, list[int]]], Mapping[str, torch.Tensor]] | None = None,
    rounds: int = 0,
    before_removal: Callable[[dict[str, list[int]]], object] | None = None,
) -> Selection:
    """Select the least relevant channels down to ``target`` (of ``policy.metric``) and remove them in place.

    ``rescore`` and ``rounds``: re-plan ``rounds`` times. ``rescore(plan)`` scores the planned channels
    by their share of the plan's *joint* removal (NaN outside the plan, see
    :func:`~singe_dist.relevance.criteria.planned_path_sums`); planned channels take that score,
    the others keep theirs, and the selection is made again. A channel that is cheap alone but
    essential together with the rest of the plan is then traded for one that is not.

    ``before_removal(channels)`` runs on the final selection before the surgery (``prune.reconstruct_batches``
    refits the layers that read the channels there, while the original shapes still line up).
    """
    def select(current: Mapping[str, torch.Tensor]) -> Selection:
        return select_channels(current, CostModel(model, groups, input_size), target, policy)

    selection = select(scores)
    current = {gid: s.detach().double().cpu().clone() for gid, s in scores.items()}
    for _ in range(rounds if rescore is not None else 0):
        joint = rescore(selection.channels)
        for gid, share in joint.items():
            planned = ~torch.isnan(share)
            current[gid][planned] = share[planned].double().cpu()
        revised = select(current)
        if revised.channels == selection.channels:
            break
        selection = revised
    if selection.channels:
        if before_removal is not None:
            before_removal(selection.channels)
        apply_step(model, selection.channels, input_size)
    return selection


def prune_one_shot(
    model: nn.Module,
    arch: str,
    num_classes: int,
    input_size: tuple[int, int, int],
    calibration: Iterable[tuple[torch.Tensor, torch.Tensor]] | None,
    criterion: CriterionConfig,
    budget: Budget,
    policy: Policy = Policy(),
    ignored_layers: Sequence[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
    reconstruct: bool = False,
) -> tuple[Plan, Selection]:
    """Score every channel once and remove the whole budget in one step (no fine-tuning).

    ``policy.metric`` must be the budget's. ``scores``: relevance computed earlier on this very model
    (one scoring serves many budgets). ``reconstruct``: refit the layers that read the removed channels
    on the calibration batches first (:mod:`singe_dist.plan.reconstruct`), for use without fine-tuning.
    """
    if policy.metric != budget.metric:
        raise SingeError(f"the selection policy counts {policy.metric} but the budget counts {budget.metric}")
    original = measure(model, input_size)
    groups = find_groups(model, example_input(model, input_size), ignored_layers)
    scorer = make_criterion(criterion)
    batches = list(calibration) if calibration is not None else None
    if scores is None:
        scores = score(scorer, model, groups, batches)
    if reconstruct and not batches:
        raise SingeError("reconstruct=True needs calibration batches to refit on")
    refit = partial(reconstruct_readers, model, groups, batches=batches) if reconstruct else None
    replan = None
    if criterion.replan and batches is not None:
        replan = partial(rescore, scorer, model, groups, batches)
    selection = decide_and_remove(
        model, groups, scores, input_size, budget.target(original), policy, rescore=replan, rounds=criterion.replan,
        before_removal=refit,
    )
    plan = Plan(arch=arch, num_classes=num_classes, input_size=input_size, steps=[selection.channels])
    return plan, selection
