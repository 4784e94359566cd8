"""The embedded-default demo: digits shards -> baseline -> SInGE entwined pruning of 50% MACs -> report.

Everything a cluster job does, on the digits that ship with scikit-learn, in a few minutes on two CPU
cores with no network: shards are written once (``runs/data/digits``), a baseline is trained once
(``runs/demo/baseline.pt``), then the main job runs from ``jobs/configs/demo.yaml`` on two Ray Train
workers of a local Ray runtime (``distributed.num_workers=0`` runs it in this process instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from singe_dist.config import JobConfig, load_config
from singe_dist.data.convert import digits_to_shards
from singe_dist.engine.baseline import train_baseline
from singe_dist.errors import SingeError
from singe_dist.launch import launch_job, tracking_hint

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo.yaml"


def demo_config(overrides: list[str] | None = None) -> JobConfig:
    if not DEMO_CONFIG.is_file():
        raise SingeError(f"demo config {DEMO_CONFIG} is missing: run the demo from a checkout of singe-dist")
    return load_config(DEMO_CONFIG, overrides)


def run_demo(overrides: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo (``overrides`` as ``section.key=value``) and return the pruning report.

    With Ray workers, the local Ray runtime and the worker group start first and come up while this
    process writes the shards and trains the baseline (two cores: one trains, one starts Ray).
    """
    config = demo_config(overrides)
    baseline = Path(config.model.checkpoint) if config.model.checkpoint else None
    if baseline is None:
        raise SingeError("the demo needs model.checkpoint (where the baseline is written)")
    workers = config.distributed.num_workers

    def prepare() -> None:
        import torch

        # one intra-op thread, like the workers (distributed.torch_threads): the other core starts Ray, and
        # on small 2-core machines OpenMP's spin-waiting makes 2 threads slower than 1 (docs/BENCHMARKS.md)
        torch.set_num_threads(config.distributed.torch_threads or 1)
        data_dir = Path(config.data.val).parent
        if not Path(config.data.val).is_file():
            log(f"[1/3] writing the digits as webdataset shards to {data_dir}")
            digits_to_shards(data_dir, size=config.data.image_size, per_shard=1000)
        else:
            log(f"[1/3] digits shards found in {data_dir}")
        if not baseline.is_file():
            log(f"[2/3] training the baseline {config.model.arch} ({config.train.iters} iterations)")
            t0 = time.perf_counter()
            # a config of its own (the launcher rewrites this one's paths meanwhile); model.checkpoint names
            # the file being written, so training starts from fresh weights (train_baseline)
            train_baseline(demo_config(overrides), baseline, log)
            log(f"      {time.perf_counter() - t0:.0f}s")
        else:
            log(f"[2/3] baseline found: {baseline}")
        where = f"{workers} Ray workers on a local Ray runtime" if workers else "this process"
        log(f"[3/3] SInGE entwined pruning: {config.prune.remove_fraction:.0%} of {config.prune.metric} in "
            f"{config.prune.steps} steps on {where} -> {config.run.out_dir}")

    if workers:
        log(f"starting a local Ray runtime and {workers} Ray Train workers (they start while the data and the "
            "baseline are prepared)")
    report = launch_job(config, log=log, prepare=prepare,
                        local_cpus=max(2, int(workers * config.distributed.cpus_per_worker)))
    log(f"\nwrote {config.run.out_dir}/report.json, plan.json and pruned.pt")
    hint = tracking_hint(config, report)
    if hint:
        log(f"MLflow dashboard: {hint}")
    return report
