"""Check every input of a pruning job before anything is created (run directory, MLflow store, Ray).

A job refused for a bad checkpoint or a missing shard must leave the disk as it found it: no
``mlflow.db``, no run directory. Each failure is the one-line :class:`SingeError` the job itself
would raise later.
"""

from __future__ import annotations

from pathlib import Path

from singe_dist.config import JobConfig
from singe_dist.errors import SingeError


def check_job_inputs(config: JobConfig, resume: bool) -> None:
    """Shards, run directory and the checkpoint the job starts from (the baseline, or the run's own)."""
    from singe_dist.checkpoint import load_model
    from singe_dist.data.shards import expand_shards
    from singe_dist.engine.run_dir import CHECKPOINT_NAME, read_job_checkpoint

    for pattern in (config.data.train, config.data.val):
        expand_shards(pattern)
    run_dir = Path(config.run.out_dir)
    if resume:
        source = run_dir / CHECKPOINT_NAME
        if not source.is_file():
            raise SingeError(f"cannot resume: {source} does not exist")
        read_job_checkpoint(source, config)
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())) and not config.run.overwrite:
        raise SingeError(f"run directory {run_dir} already exists and is not empty: pass --resume to continue "
                         "it or --set run.overwrite=true to replace it")
    load_model(config.model.checkpoint, config.model.arch, config.model.num_classes)
