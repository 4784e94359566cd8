"""Run the pruning job on Ray Train workers (design notes, section 5).

Ray is the launcher, not a different code path: every worker runs :class:`PruneJob` with a
:class:`TorchCollective` over the process group Ray Train sets up (Gloo on CPU, NCCL on GPU), streams
its own share of the shards, all-reduces relevance sums, checks that all ranks took the same plan and
fine-tunes with DDP. Checkpoints go through ``ray.train.report`` after every step; with
``FailureConfig(max_failures)`` Ray restarts a lost worker group, whose workers resume from the last
reported checkpoint and end with the same plan as an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from singe_dist.config import JobConfig, _build
from singe_dist.engine.loop import CHECKPOINT_NAME, Position, prepare_run_dir
from singe_dist.errors import SingeError


def _worker(loop_config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from singe_dist.engine.collective import TorchCollective
    from singe_dist.engine.loop import PruneJob

    config: JobConfig = _build(JobConfig, loop_config["config"], "").validate()
    threads = config.distributed.torch_threads or max(1, int(config.distributed.cpus_per_worker))
    torch.set_num_threads(threads)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = get_device()
    collective = TorchCollective(device)
    tracker = None
    if rank == 0 and config.tracking.enabled:
        from singe_dist.tracking.mlflow_tracker import make_tracker

        tracker = make_tracker(config, rank)

    resume: bool | Path = bool(loop_config["resume"])
    restored = ray.train.get_checkpoint()
    scratch = Path(tempfile.mkdtemp(prefix="singe-restore-"))
    if restored is not None:  # a restart after a failure, or --resume of a Ray run: Ray's copy wins
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
                   log=print, tags=loop_config.get("tags"))
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


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """Connect to a Ray cluster (or start a local runtime) with a clear error when it is unreachable."""
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        _probe(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True, configure_logging=False)
        else:
            # a local runtime for laptops and tests: loopback only, no dashboard. Without this switch
            # Ray replaces 127.0.0.1 by the machine's address and binds its servers to all interfaces.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False,
                     _node_ip_address="127.0.0.1")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SingeError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    return ray


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at a Ray address (``ray.init`` would retry for minutes)."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise SingeError(f"cannot connect to the Ray cluster at {address}: expected host:port or ray://host:port")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise SingeError(f"cannot connect to the Ray cluster at {address}: {exc.strerror or exc}") from None


def run_on_ray(config: JobConfig, resume: bool = False, local_cpus: int | None = None) -> dict[str, Any]:
    """Launch the job on ``config.distributed.num_workers`` Ray Train workers; return the report."""
    import json

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from singe_dist.data.shards import expand_shards

    d = config.distributed
    for pattern in (config.data.train, config.data.val):  # a missing shard fails here, not on every worker
        expand_shards(pattern)
    _absolute_paths(config)  # workers run in a copy of the working directory, elsewhere
    run_dir = Path(config.run.out_dir)
    ray = connect(d.address, local_cpus)
    use_gpu = d.use_gpu == "true" or (d.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) >= 1)
    _check_resources(ray, config, use_gpu)
    if config.tracking.enabled:  # an unreachable tracking server fails here, not in a worker later
        from singe_dist.tracking.mlflow_tracker import check_reachable, resolve_uri

        uri = resolve_uri(config)
        if uri.startswith(("http://", "https://")):
            check_reachable(uri, config.tracking.connect_timeout_s, config.tracking.experiment)
    prepare_run_dir(run_dir, resume, config.run.overwrite)
    storage = d.storage_path or str(run_dir / "ray")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": _plain(config), "resume": resume, "tags": _driver_tags()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=d.timeout_s),
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": d.cpus_per_worker}),
        run_config=RunConfig(
            name=run_dir.name, storage_path=storage,
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise SingeError(f"the Ray job ended without writing {report_path}")
    return json.loads(report_path.read_text())


def _local(path: str) -> bool:
    return "://" not in path and not path.startswith("pipe:")


def _absolute_paths(config: JobConfig) -> None:
    """Make the config's local paths absolute against the driver's working directory."""
    absolute = lambda p: os.path.abspath(os.path.expanduser(p)) if p and _local(p) else p  # noqa: E731
    config.run.out_dir = absolute(config.run.out_dir)
    config.data.train = absolute(config.data.train)
    config.data.val = absolute(config.data.val)
    config.model.checkpoint = absolute(config.model.checkpoint)
    config.distributed.storage_path = absolute(config.distributed.storage_path)
    uri = config.tracking.uri
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        config.tracking.uri = "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])


def _driver_tags() -> dict[str, str]:
    """Tags only the driver knows: workers run in a copy of the working dir without .git."""
    from singe_dist.tracking.mlflow_tracker import git_commit

    commit = git_commit()
    return {"mlflow.source.git.commit": commit} if commit else {}


def _plain(config: JobConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)
