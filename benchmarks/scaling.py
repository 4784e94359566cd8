"""Relevance wall time on 1 vs 2 Ray Train workers (1 CPU and 1 torch thread each).

Each worker runs SInGE relevance on its share of a fixed calibration set (the same total for every
world size), then the one all-reduce of sums and counts; the time reported is the slowest rank's,
from a barrier before to the end of the all-reduce. Ray start-up and worker-group creation are
timed apart, as they are paid once per job, not per pruning step.

    uv run python benchmarks/scaling.py            # full (a few minutes)
    uv run python benchmarks/scaling.py --smoke    # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch


def _worker(cfg: dict) -> None:
    import ray.train
    import torch.distributed as dist

    from singe_dist.engine.collective import TorchCollective
    from singe_dist.models import build_model
    from singe_dist.relevance.criteria import CriterionConfig, accumulate
    from singe_dist.relevance.groups import example_input, find_groups

    torch.set_num_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    col = TorchCollective(torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg["model"], 10).eval()
    size = cfg["size"]
    groups = find_groups(model, example_input(model, (3, size, size)))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(cfg["samples"], 3, size, size, generator=gen)
    y = torch.randint(0, 10, (cfg["samples"],), generator=gen)
    share = slice(rank, None, world)  # this rank's samples
    batches = [(x[share][i:i + cfg["batch"]], y[share][i:i + cfg["batch"]])
               for i in range(0, len(x[share]), cfg["batch"])]
    config = CriterionConfig(name="singe", path="group", steps=cfg["steps"], max_rows=cfg["batch"] * cfg["steps"])
    col.barrier()
    t0 = time.perf_counter()
    sums = accumulate(model, groups, batches, config)
    t1 = time.perf_counter()
    flat = sums.flatten()
    sums.load_flat(col.all_reduce_sum(flat))
    t2 = time.perf_counter()
    times = torch.tensor([t1 - t0, t2 - t1, t2 - t0], dtype=torch.float64)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    metrics = {"compute_s": float(times[0]), "allreduce_s": float(times[1]), "relevance_s": float(times[2]),
               "allreduce_bytes": flat.numel() * 8, "samples": cfg["samples"]}
    if rank == 0:  # Ray Train v2 keeps metrics only with checkpoints: hand them over in a file
        Path(cfg["out"]).write_text(json.dumps(metrics))


def run(workers: int, cfg: dict, storage: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t0 = time.perf_counter()
    cfg = {**cfg, "out": str(Path(storage) / f"metrics-{workers}.json")}
    trainer = TorchTrainer(_worker, train_loop_config=cfg, torch_config=TorchConfig(backend="gloo"),
                           scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name=f"scaling-{workers}", storage_path=storage))
    trainer.fit()
    total = time.perf_counter() - t0
    metrics = json.loads(Path(cfg["out"]).read_text())
    metrics["fit_s"] = total
    metrics["overhead_s"] = total - metrics["relevance_s"]  # worker group start-up, imports, setup, teardown
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_resnet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.samples, args.batch, args.steps = 16, 16, 8, 2
    from singe_dist.distributed.ray_runtime import connect
    from singe_dist.report import format_table

    # a local runtime of our own on 127.0.0.1, as the job starts one (never someone else's `ray start`
    # cluster); no dashboard, so Ray Train's state actor has nothing to reconcile with
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    t0 = time.perf_counter()
    ray = connect(None, num_cpus=2)
    ray_start = time.perf_counter() - t0
    cfg = {"model": args.model, "size": args.size, "samples": args.samples, "batch": args.batch, "steps": args.steps}
    results = {}
    with tempfile.TemporaryDirectory() as storage:
        for workers in (1, 2):
            results[workers] = run(workers, cfg, storage)
    ray.shutdown()
    one = results[1]["relevance_s"]
    rows = []
    for workers, m in results.items():
        speedup = one / m["relevance_s"]
        rows.append([workers, f"{m['compute_s']:.2f}", f"{m['allreduce_s'] * 1000:.1f}", f"{m['relevance_s']:.2f}",
                     f"{speedup:.2f}x", f"{speedup / workers:.0%}", f"{m['overhead_s']:.1f}", m["allreduce_bytes"]])
    print(f"model={args.model} {args.size}px, {args.samples} calibration samples in total, batch {args.batch}, "
          f"S={args.steps}, SInGE group path; 1 CPU + 1 torch thread per worker; Ray start-up {ray_start:.1f}s")
    print(format_table(["workers", "compute s", "all-reduce ms", "relevance s", "speed-up", "efficiency",
                        "worker group overhead s", "all-reduce bytes"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"ray_start_s": ray_start, "results": results}, indent=1))


if __name__ == "__main__":
    main()
