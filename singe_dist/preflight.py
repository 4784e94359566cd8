"""Check every input of a pruning job before anything is created (run directory, MLflow store, Ray).

A job refused for a bad checkpoint or a missing shard must leave the disk as it found it: no
``mlflow.db``, no run directory. Each failure is the one-line :class:`SingeError` the job itself
would raise later.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from singe_dist.config import JobConfig
from singe_dist.errors import SingeError

# Ray's job supervisor gives the entrypoint of `ray job submit` the job's runtime env in this variable.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def check_job_inputs(config: JobConfig, resume: bool) -> None:
    """Shards, run directory and the checkpoint the job starts from (the baseline, or the run's own)."""
    from singe_dist.checkpoint import load_model
    from singe_dist.data.shards import expand_shards
    from singe_dist.engine.run_dir import CHECKPOINT_NAME, read_job_checkpoint

    check_working_dir_paths(config, working_dir_copy())  # first: it explains a "matches no file" below
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


# ------------------------------------------------------------------------ `ray job submit --working-dir`
def working_dir_copy() -> Path | None:
    """Ray's unpacked copy of ``--working-dir`` when this process is the entrypoint of ``ray job submit``.

    Ray packs the working directory without what ``.gitignore`` lists (``runs/``), unpacks it on each
    node, starts the entrypoint inside it, and deletes it later: paths relative to it find no data and
    lose every output. None outside a submitted job, and for a ``local://`` working dir (a directory
    that every node already has, not a copy).
    """
    raw = os.environ.get(RAY_JOB_CONFIG_ENV)
    try:
        working_dir = json.loads(raw)["runtime_env"].get("working_dir") if raw else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(working_dir, str) or not working_dir or working_dir.startswith("local://"):
        return None
    return Path.cwd()


def check_working_dir_paths(config: JobConfig, copy: Path | None) -> None:
    """Refuse, in one line, every path of ``config`` that would resolve in Ray's working-dir ``copy``.

    Inputs (shards, checkpoint) may be relative only when they are files of the copy (tracked in git);
    outputs (run directory, Ray Train storage, a file tracking store) may never be in it.
    """
    if copy is None:
        return
    copy = copy.resolve()
    unsafe = [f"{key}={value}" for key, value in _input_paths(config) if not _packed_input(value, copy)]
    unsafe += [f"{key}={value}" for key, value, path in _output_paths(config) if _in_copy(path, copy)]
    if unsafe:
        raise SingeError(
            f"{', '.join(unsafe)}: under `ray job submit` a relative path resolves in Ray's copy of the working "
            "directory, which has no git-ignored files (runs/) and is deleted after the job; pass an absolute "
            "path on storage that every node sees (a local head: --set KEY=$PWD/...), or a URL")


def _local_path(value: str) -> str | None:
    """The file path of a shard entry, checkpoint or directory; None for a URL or a ``pipe:`` command."""
    if value.startswith("file:"):
        from urllib.parse import urlsplit

        return urlsplit(value).path
    return None if "://" in value or value.startswith("pipe:") else os.path.expanduser(value)


def _input_paths(config: JobConfig) -> Iterator[tuple[str, str]]:
    from singe_dist.data.shards import split_shard_list

    for key, source in (("data.train", config.data.train), ("data.val", config.data.val)):
        for entry in split_shard_list(source):
            yield key, entry
    if config.model.checkpoint:
        yield "model.checkpoint", config.model.checkpoint


def _output_paths(config: JobConfig) -> Iterator[tuple[str, str, str | None]]:
    """(key, value, local path or None) of where the job writes; the default MLflow store and Ray Train
    storage are beside ``run.out_dir``."""
    yield "run.out_dir", config.run.out_dir, _local_path(config.run.out_dir)
    if config.distributed.storage_path:
        yield "distributed.storage_path", config.distributed.storage_path, _local_path(config.distributed.storage_path)
    uri, key = (config.tracking.uri, "tracking.uri") if config.tracking.uri \
        else (os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI")
    if config.tracking.enabled and uri:
        from singe_dist.tracking.store import local_store_path

        yield key, uri, local_store_path(uri)


def _packed_input(value: str, copy: Path) -> bool:
    """Whether an input is safe to read: a URL, an absolute path, or files that the copy holds."""
    import webdataset as wds

    path = _local_path(value)
    if path is None or os.path.isabs(path):
        return True
    files = [copy / name for name in wds.shardlists.expand_urls(path)]  # a brace pattern, or one file
    return all(f.resolve().is_relative_to(copy) and f.is_file() for f in files)


def _in_copy(path: str | None, copy: Path) -> bool:
    """Whether an output would be written in the copy: any relative path, or an absolute one inside it."""
    if path is None:
        return False
    path = os.path.expanduser(path)
    return not os.path.isabs(path) or Path(path).resolve().is_relative_to(copy)
