"""A failed Ray Train run, worded as the job's one line: what Ray reported, and what to do.

Ray Train hands back nested exceptions (a controller failure, or a worker group error with one
traceback per rank, wrapping a health-check failure); the user needs their first meaningful line, the
rank, and the next step (raise the timeout, free resources, ``--resume``). A :class:`SingeError`
raised inside a worker is the job's own message and keeps its words.
"""

from __future__ import annotations

import re

from singe_dist.config import JobConfig
from singe_dist.errors import SingeError

_FIRST_LINE = re.compile(r"SingeError: (.+)")


def first_line(exc: BaseException) -> str:
    """The line of ``exc`` that names the error: a worker's own SingeError, a traceback's last line, or the first."""
    text = str(exc).strip()
    found = _FIRST_LINE.search(text)  # a user error raised in a worker keeps its own line
    if found:
        return found.group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # a traceback's last line names the error; otherwise the first line does
    if lines and lines[0].startswith("Traceback") or (len(lines) > 1 and lines[0].endswith(":")):
        return lines[-1]
    return lines[0] if lines else type(exc).__name__


def is_training_failure(error: BaseException) -> bool:
    """Ray Train's own report of a failed run (``fit()`` raises it, or returns it in ``result.error``)."""
    try:
        from ray.train.v2.api.exceptions import TrainingFailedError
    except ImportError:  # pragma: no cover - Ray Train v1
        return hasattr(error, "worker_failures")
    return isinstance(error, TrainingFailedError)


def raise_if_failed(error: BaseException | None, config: JobConfig) -> None:
    """Re-raise what ``fit()`` ended with: Ray Train's failures as one line, anything else as it is."""
    if error is None:
        return
    if isinstance(error, SingeError) or not is_training_failure(error):
        raise error
    raise SingeError(failure_line(error, config)) from None


def failure_line(error: BaseException, config: JobConfig) -> str:
    """One line for a failed Ray Train run: what Ray reported, and what to do."""
    cause = getattr(error, "controller_failure", None)
    if cause is not None:
        return _controller_line(cause, config)
    failures = getattr(error, "worker_failures", None)
    if failures:
        return _worker_line(failures, config)
    return f"the Ray job failed: {type(error).__name__}: {first_line(error)}"


def _controller_line(cause: BaseException, config: JobConfig) -> str:
    """The controller failed: most often a worker group that could not be (re)placed within the timeout."""
    d = config.distributed
    name = type(cause).__name__
    if "Startup" in name:
        return (f"the {d.num_workers} Ray Train workers could not be (re)started within "
                f"distributed.start_timeout_s={d.start_timeout_s:g} s (Ray: {name}: {first_line(cause)}); "
                "check the cluster's free resources, or raise the timeout if it is scaling up")
    return f"the Ray Train controller failed: {name}: {first_line(cause)}"


def _worker_line(failures: dict[int, BaseException], config: JobConfig) -> str:
    """Workers failed beyond ``max_failures``: the lowest rank's error, and how to continue."""
    d = config.distributed
    rank, exc = sorted(failures.items())[0]
    line = first_line(exc)
    inner = getattr(exc, "health_check_failure", None)  # a worker process that died: what Ray saw
    if inner is not None:
        line = f"{line} ({type(inner).__name__}: {first_line(inner)})"
    if _FIRST_LINE.search(str(exc)):  # the job's own error, not a lost worker: say it as it is
        return line
    restarts = f"after {d.max_failures} restart(s) (distributed.max_failures)" if d.max_failures else \
        "(distributed.max_failures=0: no restart)"
    return (f"the Ray workers failed {restarts}; rank {rank}: {type(exc).__name__}: {line}; "
            f"fix the cause and continue from the last checkpoint with --resume")
