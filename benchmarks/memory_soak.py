"""Memory over a long pruning run: does the process grow per step (a leak) or stay flat?

Runs the real pruning job (:class:`PruneJob`, in this process, one torch thread) on the digits shards
for many pruning steps, each with relevance on fresh calibration batches, removal, fine-tuning,
two evaluations, a checkpoint and (by default) MLflow tracking to a SQLite store, and samples this
process's resident set size (``VmRSS`` of ``/proc/self/status``, after a ``gc.collect()``) when every
step's checkpoint is written. Prints a Markdown table (step, RSS, change since the previous row) and
a summary: the least-squares slope of RSS over the second half of the steps (after warm-up: allocator
pools, import-time caches), in MB per step and KB per fine-tune iteration, with the residual
standard deviation as the noise it is to be compared with.

The model shrinks as it is pruned (to ``1 - remove_fraction`` of its MACs), so its own tensors get
smaller over the run: growth would be a leak, not the workload.

    uv run python benchmarks/memory_soak.py --every 5   # full: 60 steps x 25 iterations, ~3 min on 2 cores
    uv run python benchmarks/memory_soak.py --smoke     # 3 short steps, seconds, for the test suite

Controls (docs/RELIABILITY.md has the numbers): ``--trim`` also samples RSS after ``malloc_trim(0)``
(free pages glibc keeps are not a leak); ``--no-removal`` selects channels but removes none, so every
step has the same shapes; ``ONEDNN_PRIMITIVE_CACHE_CAPACITY=0`` in the environment turns off oneDNN's
per-shape cache of compiled convolutions.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from singe_dist.config import load_config  # noqa: E402
from singe_dist.data.convert import digits_to_shards  # noqa: E402
from singe_dist.demo import DEMO_CONFIG  # noqa: E402
from singe_dist.engine.loop import PruneJob  # noqa: E402
from singe_dist.report import format_table  # noqa: E402


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (or, with ``VmHWM``, its peak) in MB, from /proc."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def slope(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares slope of ``(x, y)`` points and the standard deviation of the residuals."""
    n = len(points)
    if n < 2:
        return 0.0, 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    residuals = [y - (my + b * (x - mx)) for x, y in points]
    return b, (sum(r * r for r in residuals) / max(1, n - 2)) ** 0.5


def _keep_every_channel() -> None:
    """Make the loop select channels as usual but remove none (the model's shapes never change)."""
    import dataclasses

    import singe_dist.engine.loop as loop
    from singe_dist.plan.cost import CostModel
    from singe_dist.plan.select import select_channels

    def select_only(model, groups, scores, input_size, target, policy, **_replan):  # noqa: ANN001, ANN003, ANN202
        # re-planning (rescore, rounds) is skipped
        chosen = select_channels(scores, CostModel(model, groups, input_size), target, policy)
        return dataclasses.replace(chosen, channels={})

    loop.decide_and_remove = select_only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="pruning steps")
    parser.add_argument("--iters", type=int, default=25, help="fine-tune iterations per step")
    parser.add_argument("--calibration-batches", type=int, default=2)
    parser.add_argument("--remove-fraction", type=float, default=0.6)
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow (SQLite) tracking")
    parser.add_argument("--trim", action="store_true",
                        help="also sample RSS after malloc_trim(0): what the allocator holds free is not a leak")
    parser.add_argument("--no-removal", action="store_true",
                        help="select channels but remove none: every step has the same shapes (a control)")
    parser.add_argument("--every", type=int, default=1, help="print every N-th step (all are measured)")
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    parser.add_argument("--smoke", action="store_true", help="3 short steps, no tracking (seconds)")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.iters, args.calibration_batches, args.no_tracking, args.every = 3, 2, 1, True, 1
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="singe-soak-") as tmp:
        shards = digits_to_shards(Path(tmp) / "shards", size=16, per_shard=500)
        overrides = [
            f"data.train={shards['train'].pattern}", f"data.val={shards['val'].pattern}", "data.image_size=16",
            "data.resize_size=16", "data.batch_size=32", "data.num_workers=0", "model.checkpoint=null",
            f"run.out_dir={Path(tmp) / 'run'}", f"prune.steps={args.steps}",
            f"prune.remove_fraction={args.remove_fraction}", f"finetune.iters_per_step={args.iters}",
            "finetune.final_iters=0", f"criterion.calibration_batches={args.calibration_batches}",
            "criterion.steps=4", "run.latency_batch_sizes=[1]", "distributed.num_workers=0",
            f"tracking.enabled={str(not args.no_tracking).lower()}", "tracking.log_model=false",
        ]
        config = load_config(DEMO_CONFIG, overrides)
        tracker = None
        if not args.no_tracking:
            from singe_dist.tracking.mlflow_tracker import make_tracker

            tracker = make_tracker(config)
        samples: list[tuple[int, float]] = []
        trimmed: list[tuple[int, float]] = []
        libc = ctypes.CDLL(None) if args.trim else None

        def sample(_path: Path, position) -> None:  # noqa: ANN001 - after every step's checkpoint
            if not position.pruned:
                gc.collect()
                samples.append((position.step, rss_mb()))
                if libc is not None:  # glibc returns the free memory it holds to the OS
                    libc.malloc_trim(0)
                    trimmed.append((position.step, rss_mb()))

        if args.no_removal:
            _keep_every_channel()
        started = time.perf_counter()
        report = PruneJob(config, tracker=tracker, checkpoint_hook=sample, log=lambda _m: None).run()
        wall = time.perf_counter() - started

    rows, previous, previous_trim = [], None, None
    for i, (step, mb) in enumerate(samples):
        if i % args.every == 0 or i == len(samples) - 1:
            row = [str(step), f"{mb:.1f}", "" if previous is None else f"{mb - previous:+.1f}"]
            previous = mb
            if trimmed:
                t = trimmed[i][1]
                row += [f"{t:.1f}", "" if previous_trim is None else f"{t - previous_trim:+.1f}"]
                previous_trim = t
            rows.append(row)
    headers = ["step", "RSS MB", "delta MB"] + (["RSS after trim MB", "delta MB"] if trimmed else [])
    print(format_table(headers, rows))
    second_half = [s for s in samples if s[0] > args.steps // 2] if args.steps > 1 else samples
    b, noise = slope(second_half)
    first = slope([s for s in samples if 1 <= s[0] <= args.steps // 2])[0]
    per_iter_kb = b * 1024 / max(1, args.iters)
    print()
    print(f"slope over the second half: {b:+.4f} MB/step ({per_iter_kb:+.2f} KB per fine-tune iteration), "
          f"residual std {noise:.2f} MB, first half {first:+.4f} MB/step")
    by_step = dict(samples)
    if trimmed:
        bt, noise_t = slope([s for s in trimmed if s[0] > args.steps // 2])
        print(f"after malloc_trim: slope over the second half {bt:+.4f} MB/step, residual std {noise_t:.2f} MB, "
              f"step 1 {dict(trimmed).get(1, float('nan')):.1f} MB -> step {args.steps} "
              f"{dict(trimmed)[args.steps]:.1f} MB")
    print(f"RSS after step 1: {by_step.get(1, float('nan')):.1f} MB, after step {args.steps}: "
          f"{by_step[args.steps]:.1f} MB, peak (VmHWM) {rss_mb('VmHWM'):.1f} MB; "
          f"{args.steps} steps x {args.iters} iterations, MACs removed {report['final']['fraction_removed']:.1%}, "
          f"tracking {'off' if args.no_tracking else 'MLflow SQLite'}"
          f"{', no removal' if args.no_removal else ''}{', malloc_trim' if args.trim else ''}, {wall:.0f} s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, 1 thread")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "samples": samples,
                                         "trimmed": trimmed,
                                         "slope_mb_per_step": b, "residual_std_mb": noise, "wall_s": wall}, indent=1))


if __name__ == "__main__":
    main()
