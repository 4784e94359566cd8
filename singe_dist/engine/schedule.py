"""How the removed fraction grows over the T pruning steps.

Removing a little at a time, with fine-tuning in between, lets the network adapt before the next
relevance estimate (SInGE's entwined pruning). ``linear`` removes equal shares of the budget;
``cosine`` removes more early, when the network is most redundant; ``exponential`` keeps the fraction
*kept* shrinking by the same factor each step (equal relative cuts).
"""

from __future__ import annotations

import math

from singe_dist.errors import SingeError


def cumulative_fractions(total: float, steps: int, kind: str = "linear") -> list[float]:
    """Fraction of the original cost removed after each of ``steps`` steps; the last is ``total``."""
    if steps < 1:
        raise SingeError(f"the schedule needs at least one step, got {steps}")
    if kind == "linear":
        fractions = [total * (t + 1) / steps for t in range(steps)]
    elif kind == "cosine":
        fractions = [total * math.sin(0.5 * math.pi * (t + 1) / steps) for t in range(steps)]
    elif kind == "exponential":
        fractions = [1.0 - (1.0 - total) ** ((t + 1) / steps) for t in range(steps)]
    else:
        raise SingeError(f"unknown schedule {kind!r}: use linear, cosine or exponential")
    fractions[-1] = total
    return fractions
