"""Where a run came from, as MLflow tags: model, criterion, run directory, git commit, Ray job id.

These are what a person filters runs by in the MLflow UI, and what ties a run back to the code and
the cluster job that produced it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from singe_dist.config import JobConfig


def git_commit() -> str | None:
    """The commit checked out in the working directory; None outside a git checkout (or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def ray_job_id() -> str | None:
    """The Ray job this process belongs to, if any: ``RAY_JOB_ID``, else an already running Ray's."""
    job = os.environ.get("RAY_JOB_ID")
    if job:
        return job
    ray = sys.modules.get("ray")  # only when Ray is already imported and initialised: never start it
    try:
        if ray is not None and ray.is_initialized():
            return str(ray.get_runtime_context().get_job_id())
    except Exception:  # noqa: BLE001
        return None
    return None


def run_tags(config: JobConfig, tags: dict[str, str], run_dir: Path) -> dict[str, str]:
    """The run's tags: model, criterion, the caller's ``tags``, the run directory, commit and Ray job.

    A caller's own ``mlflow.source.git.commit`` or ``ray.job_id`` wins: a Ray worker runs in a copy of
    the working directory without ``.git``, so the driver finds the commit and passes it on.
    """
    all_tags = {"model": config.model.arch, "criterion": config.criterion.name,
                **{k: str(v) for k, v in tags.items()}, "run_dir": str(run_dir)}
    if "mlflow.source.git.commit" not in all_tags:
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
    if "ray.job_id" not in all_tags:
        ray_job = ray_job_id()
        if ray_job:
            all_tags["ray.job_id"] = ray_job
    return all_tags


__all__ = ["git_commit", "ray_job_id", "run_tags"]
