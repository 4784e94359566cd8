"""Relevance sums: what data-driven criteria accumulate, and why they add exactly across ranks.

Data-driven criteria (``singe``, ``taylor``) accumulate *sums and counts* of the path derivative
``dL/dmu`` at each quadrature point over any iterable of batches. Sums and counts add exactly, so
two halves of the calibration data, or the shares of N distributed workers combined by one
``all_reduce(SUM)``, give exactly the relevance of the whole. Only :meth:`RelevanceSums.finalize`
turns them into scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from singe_dist.errors import SingeError
from singe_dist.relevance.groups import ChannelGroup


def path_points(steps: int, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature points mu_s in [0, 1] and weights (summing to 1) for the integral over the path."""
    if rule == "midpoint":
        points = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    else:
        points = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64)
        weights[0] = weights[-1] = 0.5 / (steps - 1)
    return points, weights


@dataclass
class RelevanceSums:
    """Per group: sum of ``dL/dmu_k`` at each path point (shape ``(S, K)``), and how many samples.

    ``squared``: the sums hold ``(dl_x/dmu_k)^2`` per sample instead (``reduce="norm"``).
    """

    points: torch.Tensor
    weights: torch.Tensor
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    loss_sum: float = 0.0
    samples: int = 0
    squared: bool = False

    @classmethod
    def empty(cls, groups: Sequence[ChannelGroup], points: torch.Tensor, weights: torch.Tensor,
              squared: bool = False) -> RelevanceSums:
        shape = lambda g: (len(points), g.size)  # noqa: E731
        return cls(
            points=points,
            weights=weights,
            sums={g.id: torch.zeros(shape(g), dtype=torch.float64) for g in groups},
            counts={g.id: torch.zeros(shape(g), dtype=torch.float64) for g in groups},
            squared=squared,
        )

    def merge(self, other: RelevanceSums) -> RelevanceSums:
        """Add another share's sums and counts (exact: the relevance of the union of the data)."""
        if other.squared != self.squared:
            raise SingeError("cannot merge relevance sums of squares (reduce=norm) with plain sums")
        for gid in self.sums:
            self.sums[gid] += other.sums[gid]
            self.counts[gid] += other.counts[gid]
        self.loss_sum += other.loss_sum
        self.samples += other.samples
        return self

    def flatten(self) -> torch.Tensor:
        """All sums and counts in one float64 vector, in group-id order: one all-reduce moves it."""
        parts = [self.sums[g].flatten() for g in sorted(self.sums)] + [self.counts[g].flatten() for g in sorted(self.counts)]
        parts.append(torch.tensor([self.loss_sum, float(self.samples)], dtype=torch.float64))
        return torch.cat(parts)

    def load_flat(self, flat: torch.Tensor) -> RelevanceSums:
        """Inverse of :meth:`flatten` (after an all-reduce)."""
        offset = 0
        for table in (self.sums, self.counts):
            for gid in sorted(table):
                n = table[gid].numel()
                table[gid] = flat[offset : offset + n].view_as(table[gid]).clone()
                offset += n
        self.loss_sum, self.samples = float(flat[offset]), int(round(float(flat[offset + 1])))
        return self

    def integrand(self) -> dict[str, torch.Tensor]:
        """Mean ``dL/dmu_k`` over the data at each path point, shape ``(S, K)`` per group (the mean of its
        per-sample squares when ``squared``)."""
        out = {}
        for gid, total in self.sums.items():
            count = self.counts[gid]
            if (count == 0).any():
                raise SingeError(f"calibration data is empty: no samples reached group {gid!r}")
            out[gid] = total / count
        return out

    def finalize(self, reduce: str = "signed") -> dict[str, torch.Tensor]:
        """Relevance per channel: ``-sum_s w_s E[dL/dmu](mu_s)`` (signed), ``sum_s w_s |E[...]|`` (abs),
        or ``sum_s w_s sqrt(E[(dl/dmu)^2])`` (norm, from sums of squares)."""
        if (reduce == "norm") != self.squared:
            have = "squares (reduce=norm)" if self.squared else "plain derivatives"
            raise SingeError(f"relevance sums hold {have}; they cannot be reduced with reduce={reduce}")
        scores = {}
        for gid, mean in self.integrand().items():
            w = self.weights.view(-1, 1)
            if reduce == "norm":
                scores[gid] = (w * mean.clamp_min(0).sqrt()).sum(0)
            elif reduce == "abs":
                scores[gid] = (w * mean.abs()).sum(0)
            else:
                scores[gid] = -(w * mean).sum(0)
        return scores

