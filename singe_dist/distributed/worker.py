"""The function every Ray Train worker runs: ordinary PyTorch, which Ray only launches.

As in Ray Train's guides, the worker function is the training script: it runs :class:`PruneJob` with a
:class:`TorchCollective` over the process group Ray Train set up (Gloo on CPU, NCCL on GPU), reports
its checkpoints through ``ray.train.report`` and resumes from ``ray.train.get_checkpoint()`` when Ray
restarts a lost worker group. The only other Ray it touches is the key-value relay
(:mod:`singe_dist.distributed.kv_relay`): checking in, waiting for the driver's inputs, and rank 0's
progress lines on a local runtime.

Ray pickles :func:`train_loop_per_worker` by its import path, so every worker imports this module;
it imports what the job needs inside the function, after Ray has set the worker's environment.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from singe_dist.config import JobConfig, config_from_dict
from singe_dist.distributed.kv_relay import LogRelay, check_in, wait_for_go
from singe_dist.engine.run_dir import CHECKPOINT_NAME, Position


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Run the pruning job as one rank of the worker group (``loop_config`` comes from the driver)."""
    import ray.train
    import torch
    from ray.train.torch import get_device

    from singe_dist.engine.collective import TorchCollective
    from singe_dist.engine.loop import PruneJob

    config = config_from_dict(loop_config["config"], checked=True)  # the driver's checked config, not re-checked
    torch.set_num_threads(config.distributed.torch_threads or max(1, int(config.distributed.cpus_per_worker)))
    rank = ray.train.get_context().get_world_rank()
    token = loop_config.get("token")
    if token:
        check_in(token, rank)
    tracker = _tracker(config, rank)  # MLflow's import and store set-up overlap the driver's prepare
    if token and loop_config.get("wait_for_go"):  # the driver prepares the inputs while this worker group started
        wait_for_go(token)
    log: Callable[[str], None] = print
    if token and loop_config.get("relay_log") and rank == 0:
        log = LogRelay(token)
    collective = TorchCollective(get_device())
    scratch = Path(tempfile.mkdtemp(prefix="singe-restore-"))
    resume = _restored_checkpoint(scratch) or bool(loop_config["resume"])
    job = PruneJob(config, collective, tracker=tracker, resume=resume, checkpoint_hook=_reporter(rank),
                   run_dir_ready=True, log=log, tags=loop_config.get("tags"))
    try:
        job.run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _tracker(config: JobConfig, rank: int) -> Any:
    """Rank 0's MLflow tracker (None elsewhere or without tracking): only rank 0 logs the run."""
    if rank != 0 or not config.tracking.enabled:
        return None
    from singe_dist.tracking.mlflow_tracker import make_tracker

    return make_tracker(config, rank)


def _restored_checkpoint(scratch: Path) -> Path | None:
    """Ray's copy of the last reported checkpoint, in ``scratch``, when Ray restarted a lost worker group.

    A restart within this launch resumes from it (not from ``--resume``'s run directory); ``None`` on a
    first start.
    """
    import ray.train

    restored = ray.train.get_checkpoint()
    if restored is None:
        return None
    with restored.as_directory() as directory:
        shutil.copy2(Path(directory) / CHECKPOINT_NAME, scratch / CHECKPOINT_NAME)
    return scratch / CHECKPOINT_NAME


def _reporter(rank: int) -> Callable[[Path, Position], None]:
    """The job's checkpoint hook: report every step to Ray Train, rank 0 with the checkpoint itself.

    Every rank must call ``ray.train.report`` (it synchronises the group); one copy of the checkpoint
    is enough, since all ranks hold the same model.
    """
    import ray.train

    def report(path: Path, position: Position) -> None:
        metrics = {"step": position.step, "iteration": position.iteration, "pruned": int(position.pruned)}
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="singe-ckpt-") as tmp:
            shutil.copy2(path, Path(tmp) / CHECKPOINT_NAME)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    return report
