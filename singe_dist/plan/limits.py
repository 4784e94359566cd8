"""The ranges of the pruning budget and of what a group may lose, written once.

Read by the job config (``prune.*``: checked when a config loads), by :class:`~singe_dist.plan.decide.Budget`
and :class:`~singe_dist.plan.select.Constraints` (the Python API), and wherever a metric is named
(:meth:`~singe_dist.plan.cost.Footprint.get`, :func:`~singe_dist.plan.select.select_channels`).
Free of torch, so configs load in a blink.
"""

from __future__ import annotations

from collections.abc import Callable

from singe_dist.errors import SingeError

METRICS = ("macs", "params")
ALLOCATIONS = ("global", "uniform", "search")
# the job's and the Python API's default: chosen on the development split of the quality benchmark
# (uniform beat global for every criterion but Taylor once fine-tuned; docs/BENCHMARKS.md, Fashion-MNIST)
DEFAULT_ALLOCATION = "uniform"

# key -> (holds, the rule in words)
LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    "remove_fraction": (lambda v: 0.0 < v < 1.0, "must be in (0, 1)"),
    "min_keep_fraction": (lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    "min_keep": (lambda v: v >= 1, "must be >= 1"),
    "round_to": (lambda v: v >= 1, "must be >= 1"),
    "max_remove_fraction": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
}


def check_limit(key: str, value: float, name: str | None = None) -> None:
    """One line naming ``name`` (default ``key``) when ``value`` breaks the rule of ``key``."""
    holds, rule = LIMITS[key]
    if not holds(value):
        raise SingeError(f"{name or key} {rule}, got {value!r}")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise SingeError(f"budget metric must be 'macs' or 'params', got {metric!r}")


def check_allocation(allocation: str, normalize_by_cost: bool, prefix: str = "") -> None:
    """One line when the allocation is unknown, or when cost normalisation, which ranks the groups against
    each other, is asked of ``uniform``, which takes the same fraction from every group (it would do nothing)."""
    if allocation not in ALLOCATIONS:
        raise SingeError(f"{prefix}allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if normalize_by_cost and allocation != "global":
        raise SingeError(f"{prefix}normalize_by_cost needs {prefix}allocation=global: {allocation!r} takes the same "
                         "fraction from every group, so there is no ranking across groups to normalise")
