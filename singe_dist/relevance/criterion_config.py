"""How relevance is computed: the criterion's settings, free of torch so configs load in a blink.

The one definition of the criterion's keys, choices and defaults: :class:`CriterionConfig`'s fields
(the names themselves are :mod:`singe_dist.relevance.registry`'s). The job config extends it
(``config.CriterionSection``) and the CLI builds its flags from :data:`CHOICES` and :data:`DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal

from singe_dist.errors import SingeError
from singe_dist.relevance.registry import DEFAULT, check_criterion


MAX_OUTPUT_CLASSES = 100  # loss=output evaluates one row per class and sample


@dataclass(frozen=True)
class CriterionConfig:
    """How relevance is computed. SInGE's defaults follow the design notes (S = 8, midpoint rule).

    ``name``: a built-in (:data:`~singe_dist.relevance.registry.BUILTIN`) or your own
    ``"package.module:Class"``; the keys a criterion does not read are ignored by it.
    """

    name: str = DEFAULT
    path: Literal["group", "channel"] = "group"
    steps: int = 8
    rule: Literal["midpoint", "trapezoid"] = "midpoint"
    # signed: -integral of E[dL/dmu] (the loss change, by completeness); abs: integral of |E[dL/dmu]|;
    # norm: integral of the per-sample gradient's RMS over the data, sqrt(E[(dl/dmu)^2]): the sensitivity,
    # which cancellations between samples do not hide. Signed kept on evidence: docs/BENCHMARKS.md
    reduce: Literal["signed", "abs", "norm"] = "signed"
    # what is differentiated per sample: ce (the loss on the labels), kl (to the model before the step), or
    # output: every centred logit, so that reduce=norm integrates the norm of the predictive function's
    # gradient (label-free; costs one row per class, hence at most MAX_OUTPUT_CLASSES classes)
    loss: Literal["ce", "kl", "output"] = "ce"
    norm: Literal[1, 2] = 2  # magnitude: L1 or L2 of the group's weights
    seed: int = 0  # random
    max_rows: int = 256  # samples x path points evaluated in one forward/backward pass
    prefix_reuse: bool = True  # run the network before a group's first consumer once per sample, not per row
    replan: int = 0  # rounds re-scoring a step's planned channels along their joint removal path (singe only)

    def __post_init__(self) -> None:
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise SingeError(f"criterion {key} must be one of {', '.join(map(str, allowed))}; got {getattr(self, key)!r}")
        if self.steps < 1 or (self.rule == "trapezoid" and self.steps < 2):
            raise SingeError(f"criterion steps must be >= 1 (>= 2 for trapezoid), got {self.steps}")
        if self.replan < 0:  # which criteria re-plan is theirs to say (Criterion.replans)
            raise SingeError(f"criterion replan must be >= 0, got {self.replan}")
        if self.replan and self.reduce == "norm":
            raise SingeError("criterion replan shares a joint loss change (signed); it cannot be used with reduce=norm")
        if self.loss == "output" and self.reduce != "norm":
            raise SingeError("criterion loss=output differentiates every logit, whose signed mean means nothing; "
                             f"it needs reduce=norm, got reduce={self.reduce}")
        if self.max_rows < 1:
            raise SingeError(f"criterion max_rows must be >= 1, got {self.max_rows}")
        check_criterion(self)  # last: a criterion of its own reads keys already checked


def _choices() -> dict[str, tuple[Any, ...]]:
    hints = typing.get_type_hints(CriterionConfig)
    return {f.name: typing.get_args(hints[f.name]) for f in dataclasses.fields(CriterionConfig)
            if typing.get_origin(hints[f.name]) is Literal}


# field -> allowed values (the fields typed Literal), and field -> default: read by the CLI's flags
CHOICES: dict[str, tuple[Any, ...]] = _choices()
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(CriterionConfig)}
