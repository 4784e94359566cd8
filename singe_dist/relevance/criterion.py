"""The interface every criterion implements: one object, called on a model's dependency groups.

Torch-Pruning's importance is the model: a new criterion is one class. The built-ins are in
:mod:`singe_dist.relevance.criteria`; yours is a subclass named ``"package.module:Class"`` in
``criterion.name`` (:mod:`singe_dist.relevance.registry`). Torch-free at import, so the registry can
check a class while a config loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from singe_dist.errors import SingeError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from singe_dist.relevance.criterion_config import CriterionConfig
    from singe_dist.relevance.groups import ChannelGroup
    from singe_dist.relevance.sums import RelevanceSums

Scores = dict[str, "torch.Tensor"]
Batches = Iterable[tuple["torch.Tensor", "torch.Tensor"]]


class Criterion:
    """One score per channel of every group. Subclass it for your own criterion.

    A data-free criterion overrides :meth:`finalize` only (``sums`` is None). A data-driven one sets
    ``needs_data``, and :meth:`accumulate` adds the batches' sums (a share of the (channel, point)
    pairs with ``channel_share``); :meth:`finalize` then reads the all-reduced sums. ``replans``: it can
    re-score a step's planned channels along their joint removal (``criterion.replan``).
    """

    needs_data: ClassVar[bool] = False
    replans: ClassVar[bool] = False

    def __init__(self, config: CriterionConfig) -> None:
        if config.replan and not self.replans:
            raise SingeError(f"criterion replan needs name=singe (a criterion that re-plans), got {config.name}")
        self.config = config

    def accumulate(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches,
                   sums: RelevanceSums | None = None, channel_share: tuple[int, int] = (0, 1),
                   progress: object | None = None) -> RelevanceSums:
        raise SingeError(f"criterion {self.config.name!r} does not use calibration data")

    def finalize(self, model: nn.Module, groups: Sequence[ChannelGroup], sums: RelevanceSums | None) -> Scores:
        raise NotImplementedError

    def plan_sums(self, model: nn.Module, groups: Sequence[ChannelGroup], batches: Batches,
                  plan: Mapping[str, Sequence[int]]) -> RelevanceSums:
        raise SingeError(f"criterion {self.config.name!r} cannot re-plan")
