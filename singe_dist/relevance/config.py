"""How relevance is computed: the criterion's settings, free of torch so configs load in a blink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from singe_dist.errors import SingeError

CRITERIA = ("singe", "taylor", "magnitude", "random")


@dataclass(frozen=True)
class CriterionConfig:
    """How relevance is computed. Defaults follow the design notes (S = 8, midpoint rule)."""

    name: Literal["singe", "taylor", "magnitude", "random"] = "singe"
    path: Literal["group", "channel"] = "group"
    steps: int = 8
    rule: Literal["midpoint", "trapezoid"] = "midpoint"
    reduce: Literal["signed", "abs"] = "signed"  # kept on evidence: docs/BENCHMARKS.md, criterion quality
    loss: Literal["ce", "kl"] = "ce"
    norm: Literal[1, 2] = 2  # magnitude: L1 or L2 of the group's weights
    seed: int = 0  # random
    max_rows: int = 256  # samples x path points evaluated in one forward/backward pass
    prefix_reuse: bool = True  # run the network before a group's first consumer once per sample, not per row
    replan: int = 0  # rounds re-scoring a step's planned channels along their joint removal path (singe only)

    def __post_init__(self) -> None:
        choices = {
            "name": CRITERIA,
            "path": ("group", "channel"),
            "rule": ("midpoint", "trapezoid"),
            "reduce": ("signed", "abs"),
            "loss": ("ce", "kl"),
            "norm": (1, 2),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise SingeError(f"criterion {key} must be one of {', '.join(map(str, allowed))}; got {getattr(self, key)!r}")
        if self.steps < 1 or (self.rule == "trapezoid" and self.steps < 2):
            raise SingeError(f"criterion steps must be >= 1 (>= 2 for trapezoid), got {self.steps}")
        if self.replan < 0 or (self.replan and self.name != "singe"):
            raise SingeError(f"criterion replan must be >= 0 and needs name=singe, got {self.replan} with {self.name}")
        if self.max_rows < 1:
            raise SingeError(f"criterion max_rows must be >= 1, got {self.max_rows}")

    @property
    def needs_data(self) -> bool:
        return self.name in ("singe", "taylor")
