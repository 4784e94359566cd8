"""The learning rate of fine-tuning, iteration by iteration (``finetune.lr*`` keys).

The fine-tuning recipe decides much of a pruned network's accuracy (Renda et al. 2020; Wang et al.
2023), so its schedule is a set of config keys rather than a constant:

- ``finetune.lr`` is the peak rate, reached after ``finetune.warmup_iters`` of linear warm-up;
- ``finetune.lr_shape`` is how it falls from there: ``cosine`` to zero, ``linear`` to zero,
  ``constant``, or ``step`` (multiplied by ``lr_gamma`` at each of ``lr_milestones``, fractions of the
  span after warm-up: Torch-Pruning's benchmark recipe is 0.01 divided by 10 at 60% and 80%);
- ``finetune.lr_span`` is what one shape covers: each fine-tuning ``phase`` on its own (the rate
  restarts after every pruning step), or the ``job``'s fine-tuning iterations all together;
- ``finetune.lr_rewind`` (learning-rate rewinding, Renda et al. 2020) replaces all of the above by the
  baseline's own training schedule: the job's N fine-tuning iterations take the rates of the last N
  iterations of ``singe-dist train``'s cosine from ``train.lr`` over ``train.iters`` (all of it, from
  the peak, when N exceeds ``train.iters``). It assumes the baseline was trained that way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from singe_dist.config import FinetuneConfig, TrainConfig

LR_SHAPES = ("cosine", "linear", "constant", "step")
LR_SPANS = ("phase", "job")


@dataclass(frozen=True)
class LrSchedule:
    """Learning rate at iteration ``i`` of a span of ``total`` iterations that starts at ``offset``.

    Callable: ``schedule(i)`` is the rate of the span's iteration ``offset + i``, so one schedule
    object serves a phase that is the middle of a job-long span (or of a rewound training schedule).
    """

    peak: float
    total: int
    shape: str = "cosine"
    warmup: int = 0
    milestones: tuple[float, ...] = (0.6, 0.8)
    gamma: float = 0.1
    offset: int = 0

    def __post_init__(self) -> None:
        if self.shape not in LR_SHAPES:
            raise ValueError(f"unknown learning-rate shape {self.shape!r}: use one of {', '.join(LR_SHAPES)}")

    def __call__(self, i: int) -> float:
        step = self.offset + i
        if self.warmup and step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.shape == "cosine":
            return 0.5 * self.peak * (1.0 + math.cos(math.pi * progress))
        if self.shape == "linear":
            return self.peak * (1.0 - progress)
        if self.shape == "step":
            return self.peak * self.gamma ** sum(progress >= m for m in self.milestones)
        return self.peak


def finetune_schedule(ft: FinetuneConfig, train: TrainConfig, phase_iters: int, done_before: int,
                      job_total: int) -> LrSchedule:
    """The schedule of one fine-tuning phase of a job, from its ``finetune`` and ``train`` sections.

    ``phase_iters``: this phase's iterations; ``done_before``: the job's fine-tuning iterations in the
    phases before it; ``job_total``: all of the job's fine-tuning iterations (every phase).
    """
    if ft.lr_rewind:
        rewound = max(0, train.iters - job_total)
        return LrSchedule(train.lr, train.iters, "cosine", offset=rewound + done_before)
    job = ft.lr_span == "job"
    return LrSchedule(ft.lr, job_total if job else phase_iters, ft.lr_shape, ft.warmup_iters,
                      tuple(ft.lr_milestones), ft.lr_gamma, done_before if job else 0)
