"""Start a pruning job: in this process (``distributed.num_workers=0``) or on Ray Train workers.

The one place that picks where a job runs and gives it its tracker; ``singe-dist prune`` (and
``jobs/prune.py``) and the demo call :func:`launch_job`. In this process rank 0's tracker is made here
(an unreachable server fails before any work); on Ray the workers make theirs
(:mod:`singe_dist.distributed.ray_launcher`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from singe_dist.config import JobConfig


def launch_job(config: JobConfig, resume: bool = False, log: Callable[[str], None] = print,
               prepare: Callable[[], None] | None = None, local_cpus: int | None = None) -> dict[str, Any]:
    """Run the job ``config`` describes and return its report; the summary table is shown either way.

    ``prepare`` (the demo's shards and baseline) runs first in this process; with Ray workers, while
    the runtime and the worker group start. ``local_cpus``: CPUs of a local Ray runtime, if one starts.
    """
    config.check_job()  # the entry point of a pruning job (a checked config returns at once)
    if config.distributed.num_workers == 0:
        from singe_dist.engine.loop import PruneJob
        from singe_dist.tracking.mlflow_tracker import make_tracker

        if prepare is not None:
            prepare()
        tracker = make_tracker(config)  # an unreachable tracking server fails here, before any work
        return PruneJob(config, tracker=tracker, resume=resume, log=log).run()  # prints its own table

    from singe_dist.distributed.ray_launcher import relays_output, run_on_ray
    from singe_dist.report import summary_table

    report = run_on_ray(config, resume=resume, local_cpus=local_cpus, log=log, prepare=prepare)
    if not relays_output(config):  # else rank 0's own table was relayed already
        log(summary_table(report))
    return report


def tracking_hint(config: JobConfig, report: dict[str, Any]) -> str | None:
    """How to open the run's MLflow dashboard (None without tracking), and whether tracking was lost."""
    if not config.tracking.enabled:
        return None
    from singe_dist.tracking.store import ui_hint

    lost = " (incomplete: tracking was lost mid-run, see tracking_lost in report.json)" \
        if report.get("tracking_lost") else ""
    return f"{ui_hint(config)}{lost}"
