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
ALLOCATIONS = ("global", "uniform")

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
