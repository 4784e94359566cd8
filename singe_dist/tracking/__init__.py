"""Tracking: what the pruning loop reports, and where it goes (nowhere, or MLflow)."""

from singe_dist.tracking.base import NullTracker, Tracker

__all__ = ["NullTracker", "Tracker"]
