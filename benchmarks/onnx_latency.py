"""ONNX Runtime CPU latency of a pruned ResNet-50 versus the unpruned one (the deployment path).

The unpruned torchvision model (random init: latency does not depend on the weights' values) and the
same model with 50% of its MACs removed by the project's own path (``plan.decide.prune_one_shot`` with
the data-free ``magnitude`` criterion, default selection policy) are exported with
:func:`singe_dist.export.export_onnx`, i.e. exactly as ``singe-dist export`` writes them (TorchScript
exporter, opset 17, dynamic batch, verified through ONNX Runtime against PyTorch before use), then
timed on ONNX Runtime's CPU execution provider with one intra-op and one inter-op thread and all graph
optimisations (ONNX Runtime's default level), at batch 1 and 8.

Timing: warm-up runs, then ``--repeats`` timed runs per model and batch size, round-robin (one run of
each model in turn), so load from other processes hits both alike; the median and p25-p75 of the wall
time are reported, and the median process CPU time per run ("CPU ms": with one thread it leaves out the
time the process waited for a core, so on a shared machine it is the steadier estimate), with the load
average before and after.

    uv run python benchmarks/onnx_latency.py                 # ResNet-50, 224 px, 30 runs (a few minutes)
    uv run python benchmarks/onnx_latency.py --out docs/results/onnx_latency.md
    uv run python benchmarks/onnx_latency.py --smoke         # ResNet-18, 64 px, 2 runs: seconds, for the tests
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from singe_dist.atomic import atomic_write_text
from singe_dist.engine.latency import cpu_name
from singe_dist.export import export_onnx
from singe_dist.models import build_model
from singe_dist.plan.cost import measure
from singe_dist.plan.decide import Budget, prune_one_shot
from singe_dist.plan.select import Policy
from singe_dist.relevance.criterion_config import CriterionConfig
from singe_dist.report import format_table

NUM_CLASSES = 1000


def _session(path: Path, threads: int):  # noqa: ANN202
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _models(arch: str, size: int, fraction: float, tmp: Path) -> list[dict]:
    """The unpruned model and the pruned one, each exported (and verified) to ONNX in ``tmp``."""
    input_size = (3, size, size)
    rows = []
    for removed in (0.0, fraction):
        torch.manual_seed(0)  # the same initial weights for both
        model = build_model(arch, NUM_CLASSES).eval()
        if removed:
            prune_one_shot(model, arch, NUM_CLASSES, input_size, None, CriterionConfig(name="magnitude"),
                           Budget("macs", removed), Policy(allocation="global"))  # as the recorded latencies
        footprint = measure(model.eval(), input_size)
        path = tmp / f"{arch}-{int(100 * removed)}.onnx"
        result = export_onnx(model, path, input_size)
        rows.append({"model": arch, "budget": removed, "macs": footprint.macs, "params": footprint.params,
                     "onnx_mb": result.size_bytes / 1e6, "export_error": result.max_error, "path": path})
    for row in rows:
        row["removed"] = 1.0 - row["macs"] / rows[0]["macs"]
    return rows


def _time(sessions: list, batch: int, size: int, repeats: int, warmup: int) -> tuple[list, list]:
    """Wall and process-CPU ms of each run of each session, round-robin."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    name = sessions[0].get_inputs()[0].name
    for session in sessions:
        for _ in range(warmup):
            session.run(None, {name: x})
    wall: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    for _ in range(repeats):
        for i, session in enumerate(sessions):
            cpu0, start = time.process_time(), time.perf_counter()
            session.run(None, {name: x})
            wall[i].append(1000.0 * (time.perf_counter() - start))
            cpu[i].append(1000.0 * (time.process_time() - cpu0))
    return wall, cpu


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224, help="input resolution (px)")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the MACs removed")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per model and batch size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--note", default="", help="a remark on the machine's state, printed with the table")
    parser.add_argument("--out", help="also write the table (markdown) here and the raw numbers beside it (.json)")
    parser.add_argument("--smoke", action="store_true", help="resnet18, 64 px, 2 runs, 1 warm-up")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.size, args.repeats, args.warmup = "resnet18", 64, 2, 1
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    torch.set_num_threads(1)
    import onnxruntime as ort

    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnx-latency-") as tmp:
        rows = _models(args.model, args.size, args.fraction, Path(tmp))
        sessions = [_session(r["path"], args.threads) for r in rows]
        for batch in batch_sizes:
            wall, cpu = _time(sessions, batch, args.size, args.repeats, args.warmup)
            for i, row in enumerate(rows):
                q1, median, q3 = _quartiles(wall[i])
                row[f"b{batch}"] = {"median_ms": median, "p25_ms": q1, "p75_ms": q3,
                                    "cpu_median_ms": statistics.median(cpu[i]), "times_ms": wall[i], "cpu_ms": cpu[i]}
        del sessions
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - start

    headers = ["model", "MACs removed (budget)", "MACs", "MACs removed", "params", "ONNX MB"]
    for batch in batch_sizes:
        headers += [f"b{batch} ms", f"b{batch} p25-p75 ms", f"b{batch} speed-up", f"b{batch} CPU ms",
                    f"b{batch} CPU speed-up"]
    table = []
    base = rows[0]
    for r in rows:
        line = [r["model"], f"{100 * r['budget']:.0f}%", f"{r['macs'] / 1e6:,.1f}M", f"{100 * r['removed']:.1f}%",
                f"{r['params'] / 1e6:.2f}M", f"{r['onnx_mb']:.1f}"]
        for batch in batch_sizes:
            t, b = r[f"b{batch}"], base[f"b{batch}"]
            line += [f"{t['median_ms']:.2f}", f"{t['p25_ms']:.2f}-{t['p75_ms']:.2f}",
                     f"{b['median_ms'] / t['median_ms']:.2f}x", f"{t['cpu_median_ms']:.2f}",
                     f"{b['cpu_median_ms'] / t['cpu_median_ms']:.2f}x"]
        table.append(line)
    header = (f"model={args.model} input={args.size}x{args.size} batch={','.join(map(str, batch_sizes))} "
              f"intra_op_threads={args.threads} inter_op_threads=1 opt=ORT_ENABLE_ALL repeats={args.repeats} "
              f"warmup={args.warmup} criterion=magnitude cpu={cpu_name()} ({os.cpu_count()} cores) "
              f"onnxruntime={ort.__version__} torch={torch.__version__} date={date}")
    load = (f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
            f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; total {elapsed:.0f} s; exports "
            "verified against PyTorch (max relative difference "
            + ", ".join(f"{r['export_error']:.1e}" for r in rows) + ")")
    text = format_table(headers, table)
    print(header)
    print(load)
    if args.note:
        print(args.note)
    print()
    print(text)
    if args.out:
        atomic_write_text(args.out, "\n\n".join(p for p in (header, load, args.note, text) if p) + "\n")
        meta = {"header": header, "date": date, "load_before": load_before, "load_after": load_after,
                "total_s": elapsed, "note": args.note,
                "results": [{k: v for k, v in r.items() if k != "path"} for r in rows]}
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
