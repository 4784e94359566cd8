"""SInGE's per-weight reading: integrated gradients of every weight that reads a channel.

The paper (Yvinec et al. 2022, Figure 1) integrates gradient variations "along a path down to zero
magnitude". Read per weight: a channel k is read by its consumers' weights ``W[:, k]`` (the input
slice the removal gate scales, :mod:`singe_dist.relevance.groups`); along the path that scales them
from 1 to 0, weight i's attribution is

    A_i = W_i * integral_0^1 dL/dW_i (mu W) dmu

and by completeness ``sum_i A_i = L(present) - L(removed)``: the signed sum is the gate reading. The
channel's relevance here is instead the L1 or L2 norm of its attributions (``criterion.norm``), which
a cancellation between weights does not hide. The sums hold, per group and consumer, the
quadrature-weighted sum over samples of ``dL/dW`` on the channel slices: they add across ranks exactly
(``flatten`` / ``load_flat`` for the all-reduce), and only :meth:`WeightSums.attributions` multiplies by
the weights.

``path=group`` walks all of a group's channels together (S passes per group and batch, the joint path:
completeness then holds for the whole group); ``path=channel`` walks each channel alone (K x S passes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from singe_dist import interrupt
from singe_dist.errors import SingeError
from singe_dist.relevance.criterion_config import CriterionConfig
from singe_dist.relevance.groups import ChannelGroup, GroupMember
from singe_dist.relevance.paths import frozen
from singe_dist.relevance.sums import path_points


def _slice(weight: torch.Tensor, member: GroupMember) -> torch.Tensor:
    """A consumer's weights that read the group's channels, one row per input index: ``(n, rest)``."""
    part = weight.index_select(1, member.idxs.to(weight.device))
    return part.transpose(0, 1).reshape(len(member.idxs), -1)


@dataclass
class WeightSums:
    """Per group: for each consumer, the weighted sum over samples and path points of ``dL/dW`` on its
    channel slice (shape ``(n, rest)``), and the samples counted."""

    groups: dict[str, ChannelGroup]
    sums: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    loss_sum: float = 0.0
    samples: int = 0

    @classmethod
    def empty(cls, groups: Sequence[ChannelGroup]) -> WeightSums:
        sums = {g.id: [torch.zeros_like(_slice(m.module.weight.detach().cpu(), m), dtype=torch.float64)
                       for m in g.consumers] for g in groups}
        return cls({g.id: g for g in groups}, sums)

    def flatten(self) -> torch.Tensor:
        parts = [t.flatten() for gid in sorted(self.sums) for t in self.sums[gid]]
        return torch.cat([*parts, torch.tensor([self.loss_sum, float(self.samples)], dtype=torch.float64)])

    def load_flat(self, flat: torch.Tensor) -> WeightSums:
        offset = 0
        for gid in sorted(self.sums):
            for i, t in enumerate(self.sums[gid]):
                self.sums[gid][i] = flat[offset : offset + t.numel()].view_as(t).clone()
                offset += t.numel()
        self.loss_sum, self.samples = float(flat[offset]), int(round(float(flat[offset + 1])))
        return self

    def attributions(self) -> dict[str, list[torch.Tensor]]:
        """Per group, per channel: the attributions ``A_i`` of every weight that reads it (all consumers)."""
        if self.samples == 0:
            raise SingeError("calibration data is empty: no batch was read")
        out = {}
        for gid, group in self.groups.items():
            per_channel: list[list[torch.Tensor]] = [[] for _ in range(group.size)]
            for member, total in zip(group.consumers, self.sums[gid]):
                a = _slice(member.module.weight.detach().cpu().double(), member) * (total / self.samples)
                for row, root in enumerate(member.root_idxs.tolist()):
                    per_channel[root].append(a[row])
            out[gid] = [torch.cat(rows) if rows else torch.zeros(0, dtype=torch.float64) for rows in per_channel]
        return out


def accumulate_weights(model: nn.Module, groups: Sequence[ChannelGroup],
                       batches: Iterable[tuple[torch.Tensor, torch.Tensor]], config: CriterionConfig,
                       sums: WeightSums | None = None) -> WeightSums:
    """Add ``batches``' weighted ``dL/dW`` along each path to ``sums`` (BatchNorm on running statistics)."""
    if config.loss != "ce" or config.reduce != "signed":
        raise SingeError("criterion singe_weights reads the cross-entropy's gradients (loss=ce) and takes no "
                         f"reduce (its norm is criterion.norm); got loss={config.loss}, reduce={config.reduce}")
    sums = sums or WeightSums.empty(groups)
    points, weights = path_points(config.steps, config.rule)
    device = next(model.parameters()).device
    with frozen(model):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            for g in groups:
                for mu, w, channel in _points(g, points, weights, config.path):
                    interrupt.check()
                    grads = _gradients(model, g, x, y, mu, channel)
                    for i, (member, grad) in enumerate(zip(g.consumers, grads)):
                        rows = slice(None) if channel is None else member.root_idxs == channel  # its own path only
                        sums.sums[g.id][i][rows] += w * grad[rows].double().cpu()
            with torch.no_grad():
                sums.loss_sum += float(F.cross_entropy(model(x), y, reduction="sum"))
            sums.samples += len(x)
    if sums.samples == 0:
        raise SingeError("calibration data is empty: no batch was read")
    return sums


def _points(group: ChannelGroup, points: torch.Tensor, weights: torch.Tensor, path: str):  # noqa: ANN202
    """(mu, quadrature weight, channel or None for the whole group) of every pass of a group's paths."""
    channels = [None] if path == "group" else range(group.size)
    return [(float(mu), float(w), k) for k in channels for mu, w in zip(points, weights)]


def _gradients(model: nn.Module, group: ChannelGroup, x: torch.Tensor, y: torch.Tensor, mu: float,
               channel: int | None) -> list[torch.Tensor]:
    """``dL/dW`` (summed over the batch) on each consumer's channel slice, its slice of the channels on the
    path scaled by ``mu``."""
    scaled, leaves = {}, []
    for member in group.consumers:
        weight = member.module.weight.detach()
        scale = torch.ones(weight.shape[1], dtype=weight.dtype, device=weight.device)
        moving = member.idxs if channel is None else member.idxs[member.root_idxs == channel]
        scale[moving.to(weight.device)] = mu
        leaf = (weight * scale.view(1, -1, *([1] * (weight.dim() - 2)))).requires_grad_(True)
        scaled[f"{member.name}.weight"] = leaf
        leaves.append(leaf)
    loss = F.cross_entropy(functional_call(model, scaled, (x,)), y, reduction="sum")
    grads = torch.autograd.grad(loss, leaves)
    return [_slice(grad, member) for grad, member in zip(grads, group.consumers)]
