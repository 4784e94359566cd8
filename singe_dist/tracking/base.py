"""The tracker interface the pruning loop reports to (only rank 0 gets a real one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from torch import nn


class Tracker(Protocol):
    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        """A run begins (or resumes): flattened config as params, descriptive tags."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Metrics at a pruning step (or a fine-tune iteration, for the loss)."""

    def log_step(self, row: dict[str, Any], relevance: dict[str, Any] | None) -> None:
        """One pruning step's row of the report and its relevance scores (for plots)."""

    def finish(self, run_dir: Path, report: dict[str, Any], model: nn.Module, input_size: tuple[int, ...]) -> None:
        """The run ended: artifacts of ``run_dir``, the report, the pruned model."""

    def fail(self, error: BaseException) -> None:
        """The run failed: mark it so, keep what was logged."""


class NullTracker:
    """Tracks nothing: ranks other than 0, and runs without tracking."""

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        return None

    def log_step(self, row: dict[str, Any], relevance: dict[str, Any] | None) -> None:
        return None

    def finish(self, run_dir: Path, report: dict[str, Any], model: nn.Module, input_size: tuple[int, ...]) -> None:
        return None

    def fail(self, error: BaseException) -> None:
        return None
