"""Run the pruning job on Ray Train workers (design notes, section 5): the entry point, :func:`run_on_ray`.

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

One concern per module, each importing only those below it:

* this module: checks the config, makes its paths absolute, owns the runtime's lifetime and the
  launch's timings in report.json;
* :mod:`.driver`: builds the ``TorchTrainer`` and follows its ``fit()``;
* :mod:`.ray_runtime`: connects (or starts a local runtime) with the environment Ray reads at import;
* :mod:`.worker`: the function every worker runs (ordinary PyTorch; Ray only launches it);
* :mod:`.watchdog` and :mod:`.failures`: a start that does not happen, and a failed run, as one line;
* :mod:`.kv_relay`: the key-value store the driver and the workers talk through;
* :mod:`.background`: work in a thread, so the main thread keeps the signals.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from singe_dist.atomic import atomic_write_text
from singe_dist.config import DistributedConfig, JobConfig
from singe_dist.data.shards import split_shard_list
from singe_dist.distributed.background import Background
from singe_dist.distributed.driver import check_shards, fit
from singe_dist.distributed.ray_runtime import connect, stop_ray
from singe_dist.errors import SingeError
from singe_dist.interrupt import interruptible, reinstall


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
    if not config.checked:  # launch_job checks it: validated once, before Ray or any worker starts
        raise SingeError("run_on_ray needs a checked job config: JobConfig.check_job() (launch_job does it)")
    if prepare is None:
        check_shards(config)
    _absolute_paths(config)  # workers run in a copy of the working directory, elsewhere
    local = relays_output(config)
    _train_environment(config.distributed, local)
    owned = "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # else the caller's to stop
    with interruptible():
        t0 = time.perf_counter()
        pending = Background(prepare, "singe-dist-prepare") if prepare is not None else None
        ray = connect(config.distributed.address, local_cpus)
        reinstall()  # ray.init puts a C++ SIGTERM handler in place (stack trace, abort)
        timings = {"ray_start_s": time.perf_counter() - t0}
        try:
            report = fit(ray, config, resume, local, log, timings, pending)
        finally:
            if owned:  # a local runtime ends with its processes; on a cluster, the controller and workers end
                stop_ray(ray)
    _record_timings(report, timings, Path(config.run.out_dir))
    return report


def relays_output(config: JobConfig) -> bool:
    """Whether :func:`run_on_ray` prints rank 0's lines itself (a local runtime), summary table included."""
    return not (config.distributed.address or os.environ.get("RAY_ADDRESS"))


def _train_environment(d: DistributedConfig, local: bool) -> None:
    """Ray Train reads these in the driver and hands them to its controller: a worker group that cannot
    be placed (or re-placed after a loss) fails after start_timeout_s instead of retrying forever."""
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{d.start_timeout_s:g}"
    if local:
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")  # no dashboard to reconcile with


def _record_timings(report: dict[str, Any], timings: dict[str, float], run_dir: Path) -> None:
    """The launcher's share of the wall time, beside the loop's phases, in the report and its file."""
    report["launch_s"] = {k: round(v, 2) for k, v in timings.items()}
    try:
        atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))
    except SingeError:
        pass


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
