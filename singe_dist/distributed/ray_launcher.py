"""Run the pruning job on Ray Train workers (design notes, section 5).

Ray is the launcher, not a different code path: every worker runs :class:`PruneJob` with a
:class:`TorchCollective` over the process group Ray Train sets up (Gloo on CPU, NCCL on GPU), streams
its own share of the shards, all-reduces relevance sums, checks that all ranks took the same plan and
fine-tunes with DDP. Checkpoints go through ``ray.train.report`` after every step; with
``FailureConfig(max_failures)`` Ray restarts a lost worker group, whose workers resume from the last
reported checkpoint and end with the same plan as an uninterrupted run.

Nothing waits silently: the driver watches the worker group start (``distributed.start_timeout_s``;
workers check in through Ray's key-value store) and stops the job with one line naming the cause Ray
reported; a restart that cannot start either is bounded the same way. SIGINT/SIGTERM stop the workers
and a local Ray runtime within seconds (:mod:`singe_dist.interrupt`). Workers of the local runtime run
in the driver's own Python environment: Ray's ``uv run`` propagation is switched off (it re-runs the
driver's ``uv`` command line, relative path included, in every worker). The local runtime's workers do
not print to the driver: rank 0's progress lines come back through the key-value store, so a run
shows its own output and not Ray's.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from singe_dist import interrupt
from singe_dist.config import JobConfig, config_from_dict, config_to_dict
from singe_dist.data.shards import split_shard_list
from singe_dist.distributed.failures import raise_if_failed
from singe_dist.distributed.kv_relay import LogRelay, check_in, give_go, relay_log, wait_for_go
from singe_dist.distributed.ray_runtime import connect, stop_ray
from singe_dist.distributed.watchdog import StartWatchdog
from singe_dist.engine.run_dir import CHECKPOINT_NAME, Position, prepare_run_dir
from singe_dist.errors import SingeError


def _worker(loop_config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from singe_dist.engine.collective import TorchCollective
    from singe_dist.engine.loop import PruneJob

    config = config_from_dict(loop_config["config"])
    threads = config.distributed.torch_threads or max(1, int(config.distributed.cpus_per_worker))
    torch.set_num_threads(threads)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    token = loop_config.get("token")
    if token:
        check_in(token, rank)  # when this worker began (for launch_s)
    tracker = None
    if rank == 0 and config.tracking.enabled:  # (MLflow's import and store set-up overlap the driver's prepare)
        from singe_dist.tracking.mlflow_tracker import make_tracker

        tracker = make_tracker(config, rank)
    if token and loop_config.get("wait_for_go"):  # the driver prepares the inputs while this worker group started
        wait_for_go(token)
    log: Callable[[str], None] = print
    if token and loop_config.get("relay_log") and rank == 0:
        log = LogRelay(token)
    device = get_device()
    collective = TorchCollective(device)
    resume: bool | Path = bool(loop_config["resume"])
    restored = ray.train.get_checkpoint()
    scratch = Path(tempfile.mkdtemp(prefix="singe-restore-"))
    if restored is not None:  # a restart after lost workers, within this launch: Ray's copy
        with restored.as_directory() as directory:
            shutil.copy2(Path(directory) / CHECKPOINT_NAME, scratch / CHECKPOINT_NAME)
        resume = scratch / CHECKPOINT_NAME

    def report(path: Path, position: Position) -> None:
        metrics = {"step": position.step, "iteration": position.iteration, "pruned": int(position.pruned)}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="singe-ckpt-") as tmp:
            shutil.copy2(path, Path(tmp) / CHECKPOINT_NAME)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    job = PruneJob(config, collective, tracker=tracker, resume=resume, checkpoint_hook=report, run_dir_ready=True,
                   log=log, tags=loop_config.get("tags"))
    try:
        job.run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_resources(ray_module: Any, config: JobConfig, use_gpu: bool) -> None:
    """More workers than the cluster can place would wait forever: say so up front."""
    total = ray_module.cluster_resources()
    d = config.distributed
    if total.get("CPU", 0) + 1e-9 < d.num_workers * d.cpus_per_worker or (use_gpu and total.get("GPU", 0) < d.num_workers):
        have = f"{total.get('CPU', 0):g} CPU" + (f", {total.get('GPU', 0):g} GPU" if use_gpu else "")
        want = f"{d.num_workers} workers x {d.cpus_per_worker:g} CPU" + (" + 1 GPU each" if use_gpu else "")
        raise SingeError(f"the Ray cluster has {have}, not enough for distributed.num_workers: {want}; "
                         "lower distributed.num_workers or distributed.cpus_per_worker")


def run_on_ray(config: JobConfig, resume: bool = False, local_cpus: int | None = None,
               log: Callable[[str], None] = print, prepare: Callable[[], None] | None = None) -> dict[str, Any]:
    """Launch the job on ``config.distributed.num_workers`` Ray Train workers; return the report.

    ``prepare`` (the demo's shards and baseline) runs in a thread of its own while this one starts Ray
    and the worker group; the workers begin the job once it has returned and the shards are checked.

    Raises :class:`SingeError` (one line) when the workers do not start within
    ``distributed.start_timeout_s`` or fail beyond ``distributed.max_failures``, and
    :class:`singe_dist.interrupt.Interrupted` after a SIGINT/SIGTERM, once workers (and a local
    runtime) are stopped.
    """
    import json

    from singe_dist.data.shards import expand_shards
    from singe_dist.interrupt import interruptible, reinstall

    config.check_job()  # a rule across keys refuses here, before Ray or any worker starts
    d = config.distributed
    if prepare is None:
        for pattern in (config.data.train, config.data.val):  # a missing shard fails here, not on every worker
            expand_shards(pattern)
    _absolute_paths(config)  # workers run in a copy of the working directory, elsewhere
    run_dir = Path(config.run.out_dir)
    local = relays_output(config)
    # Ray Train reads these in the driver and hands them to its controller: a worker group that cannot
    # be placed (or re-placed after a loss) fails after start_timeout_s instead of retrying forever
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{d.start_timeout_s:g}"
    if local:
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")  # no dashboard to reconcile with
    owned = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # else the caller's to stop
    with interruptible():
        t0 = time.perf_counter()
        pending = _Background(prepare) if prepare is not None else None
        ray = connect(d.address, local_cpus)
        reinstall()  # ray.init puts a C++ SIGTERM handler in place (stack trace, abort)
        timings = {"ray_start_s": time.perf_counter() - t0}
        try:
            report = _fit(ray, config, resume, local, log, timings, pending)
        finally:
            if owned:  # a local runtime ends with its processes; on a cluster, the controller and workers end
                stop_ray(ray)
    report_path = run_dir / "report.json"
    report["launch_s"] = {k: round(v, 2) for k, v in timings.items()}
    try:  # the launcher's share of the wall time, beside the loop's phases
        from singe_dist.atomic import atomic_write_text

        atomic_write_text(report_path, json.dumps(report, indent=1))
    except SingeError:
        pass
    return report


def _fit(ray: Any, config: JobConfig, resume: bool, local: bool, log: Callable[[str], None],
         timings: dict[str, float], pending: _Background | None) -> dict[str, Any]:
    import json

    from singe_dist.data.shards import expand_shards

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    d = config.distributed
    run_dir = Path(config.run.out_dir)
    use_gpu = d.use_gpu == "true" or (d.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
    _check_resources(ray, config, use_gpu)
    if config.tracking.enabled:  # an unreachable tracking server fails here, not in a worker later
        from singe_dist.tracking.connect import check_reachable
        from singe_dist.tracking.store import resolve_uri

        uri = resolve_uri(config)
        if uri.startswith(("http://", "https://")):
            check_reachable(uri, config.tracking.connect_timeout_s, config.tracking.experiment)
    prepare_run_dir(run_dir, resume, config.run.overwrite)
    storage = d.storage_path or str(run_dir / "ray")
    token = f"run-{uuid.uuid4().hex}"
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": config_to_dict(config), "resume": resume, "tags": _driver_tags(), "token": token,
                           "relay_log": local, "wait_for_go": pending is not None},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=d.timeout_s),
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": d.cpus_per_worker}),
        run_config=RunConfig(
            # a name per launch: Ray Train restores its own checkpoints only within this launch (lost workers);
            # --resume reads the run directory's checkpoint.pt, the one the interrupted run named
            name=f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}-{token[4:12]}", storage_path=storage,
            # a worker group that cannot be (re)started is a controller failure: stop, do not retry forever
            failure_config=FailureConfig(max_failures=d.max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    # fit() runs in a thread, so this (main) thread keeps the signals and watches the start
    thread = threading.Thread(target=fit, name="singe-dist-fit", daemon=True)
    watchdog = StartWatchdog(token, d, local)  # the start is timed from here, prepare included
    thread.start()
    if pending is not None:
        timings["prepare_s"] = pending.wait()
        for pattern in (config.data.train, config.data.val):
            expand_shards(pattern)
        give_go(token)
    while thread.is_alive():
        thread.join(0.5)
        interrupt.check()
        relay_log(token, log)
        watchdog.poll(thread.is_alive)
    relay_log(token, log)
    if watchdog.workers_start_s is not None:
        timings["workers_start_s"] = watchdog.workers_start_s
    raise_if_failed(outcome["error"] if "error" in outcome else outcome["result"].error, config)
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise SingeError(f"the Ray job ended without writing {report_path}")
    return json.loads(report_path.read_text())


class _Background:
    """``work()`` in a daemon thread; :meth:`wait` (main thread, signals still delivered) re-raises its error."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self.t0 = time.perf_counter()
        self.seconds = 0.0

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # noqa: BLE001 - handed to wait()
                self.error = exc
            self.seconds = time.perf_counter() - self.t0

        self.thread = threading.Thread(target=run, name="singe-dist-prepare", daemon=True)
        self.thread.start()

    def wait(self) -> float:
        while self.thread.is_alive():
            self.thread.join(0.5)
            interrupt.check()
        if self.error is not None:
            raise self.error
        return self.seconds


def relays_output(config: JobConfig) -> bool:
    """Whether :func:`run_on_ray` prints rank 0's lines itself (a local runtime), summary table included."""
    return not (config.distributed.address or os.environ.get("RAY_ADDRESS"))


def _local(path: str) -> bool:
    return "://" not in path and not path.startswith("pipe:")


def _absolute_paths(config: JobConfig) -> None:
    """Make the config's local paths absolute against the driver's working directory."""
    absolute = lambda p: os.path.abspath(os.path.expanduser(p)) if p and _local(p) else p  # noqa: E731
    config.run.out_dir = absolute(config.run.out_dir)
    shards = lambda s: ",".join(absolute(entry) for entry in split_shard_list(s))  # noqa: E731 - a list too
    config.data.train = shards(config.data.train)
    config.data.val = shards(config.data.val)
    config.model.checkpoint = absolute(config.model.checkpoint)
    config.distributed.storage_path = absolute(config.distributed.storage_path)
    uri = config.tracking.uri
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        config.tracking.uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])


def _driver_tags() -> dict[str, str]:
    """Tags only the driver knows: workers run in a copy of the working dir without .git."""
    from singe_dist.tracking.provenance import git_commit

    commit = git_commit()
    return {"mlflow.source.git.commit": commit} if commit else {}
