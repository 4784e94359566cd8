"""The driver: build Ray Train's ``TorchTrainer`` for the job, run its ``fit()`` and follow it to the report.

``fit()`` runs in a thread of its own (:class:`Background`), so the main thread keeps the signals and,
every half second, checks for a stop, prints rank 0's relayed lines and lets the start watchdog count
the workers. What can be refused before a worker starts (too few resources, an unreachable tracking
server, a run directory in the way) is refused here, on the driver, with one line.

Ray is imported inside the functions: :func:`singe_dist.distributed.ray_runtime.connect` sets the
environment it reads at import.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from singe_dist import interrupt
from singe_dist.config import DistributedConfig, JobConfig, config_to_dict
from singe_dist.data.shards import expand_shards
from singe_dist.distributed.background import Background
from singe_dist.distributed.failures import raise_if_failed
from singe_dist.distributed.kv_relay import give_go, relay_log
from singe_dist.distributed.watchdog import StartWatchdog
from singe_dist.distributed.worker import train_loop_per_worker
from singe_dist.engine.run_dir import prepare_run_dir
from singe_dist.errors import SingeError


def fit(ray: Any, config: JobConfig, resume: bool, local: bool, log: Callable[[str], None],
        timings: dict[str, float], pending: Background | None) -> dict[str, Any]:
    """Run the job on the worker group and return rank 0's report; ``timings`` gains the launch's phases.

    ``pending`` (the demo's prepare, already running) is awaited while the worker group starts; the
    workers begin once it has returned and the shards are checked.
    """
    run_dir = Path(config.run.out_dir)
    use_gpu = _use_gpu(ray, config.distributed)
    _check_resources(ray, config, use_gpu)
    _check_tracking(config)
    prepare_run_dir(run_dir, resume, config.run.overwrite)
    token = f"run-{uuid.uuid4().hex}"
    trainer = _trainer(config, use_gpu, token, resume=resume, local=local, wait_for_go=pending is not None)
    watchdog = StartWatchdog(token, config.distributed, local)  # the start is timed from here, prepare included
    fitting = Background(trainer.fit, "singe-dist-fit")
    if pending is not None:
        timings["prepare_s"] = pending.wait()
        check_shards(config)
        give_go(token)
    _follow(fitting, watchdog, token, log)
    if watchdog.workers_start_s is not None:
        timings["workers_start_s"] = watchdog.workers_start_s
    raise_if_failed(fitting.error if fitting.error is not None else fitting.result.error, config)
    return _read_report(run_dir)


def check_shards(config: JobConfig) -> None:
    """A missing shard fails here, on the driver, not on every worker."""
    for pattern in (config.data.train, config.data.val):
        expand_shards(pattern)


def _use_gpu(ray: Any, d: DistributedConfig) -> bool:
    return d.use_gpu == "true" or (d.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)


def _check_resources(ray_module: Any, config: JobConfig, use_gpu: bool) -> None:
    """More workers than the cluster can place would wait forever: say so up front."""
    total = ray_module.cluster_resources()
    d = config.distributed
    if total.get("CPU", 0) + 1e-9 < d.num_workers * d.cpus_per_worker or (use_gpu and total.get("GPU", 0) < d.num_workers):
        have = f"{total.get('CPU', 0):g} CPU" + (f", {total.get('GPU', 0):g} GPU" if use_gpu else "")
        want = f"{d.num_workers} workers x {d.cpus_per_worker:g} CPU" + (" + 1 GPU each" if use_gpu else "")
        raise SingeError(f"the Ray cluster has {have}, not enough for distributed.num_workers: {want}; "
                         "lower distributed.num_workers or distributed.cpus_per_worker")


def _check_tracking(config: JobConfig) -> None:
    """An unreachable tracking server fails here, not in a worker later."""
    if not config.tracking.enabled:
        return
    from singe_dist.tracking.connect import check_reachable
    from singe_dist.tracking.store import resolve_uri

    uri = resolve_uri(config)
    if uri.startswith(("http://", "https://")):
        check_reachable(uri, config.tracking.connect_timeout_s, config.tracking.experiment)


def _trainer(config: JobConfig, use_gpu: bool, token: str, resume: bool, local: bool, wait_for_go: bool) -> Any:
    """The ``TorchTrainer`` that runs :func:`train_loop_per_worker` on ``distributed.num_workers`` workers."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    d = config.distributed
    run_dir = Path(config.run.out_dir)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_to_dict(config), "resume": resume, "tags": _driver_tags(), "token": token,
                           "relay_log": local, "wait_for_go": wait_for_go},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=d.timeout_s),
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": d.cpus_per_worker}),
        run_config=RunConfig(
            # a name per launch: Ray Train restores its own checkpoints only within this launch (lost workers);
            # --resume reads the run directory's checkpoint.pt, the one the interrupted run named
            name=f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}-{token[4:12]}",
            storage_path=d.storage_path or str(run_dir / "ray"),
            # a worker group that cannot be (re)started is a controller failure: stop, do not retry forever
            failure_config=FailureConfig(max_failures=d.max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def _driver_tags() -> dict[str, str]:
    """Tags only the driver knows: workers run in a copy of the working dir without .git."""
    from singe_dist.tracking.provenance import git_commit

    commit = git_commit()
    return {"mlflow.source.git.commit": commit} if commit else {}


def _follow(fitting: Background, watchdog: StartWatchdog, token: str, log: Callable[[str], None]) -> None:
    """Wait for ``fit()`` in half-second slices: stop at a signal, print relayed lines, watch the start."""
    while fitting.is_alive():
        fitting.join(0.5)
        interrupt.check()
        relay_log(token, log)
        watchdog.poll(fitting.is_alive)
    relay_log(token, log)


def _read_report(run_dir: Path) -> dict[str, Any]:
    """Rank 0's report.json: a job that ended without it did not finish, whatever Ray says."""
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise SingeError(f"the Ray job ended without writing {report_path}")
    return json.loads(report_path.read_text())
