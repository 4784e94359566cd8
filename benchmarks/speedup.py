"""Measured CPU latency of pruned ResNet-50 and MobileNetV2 versus the unpruned models.

Each model (torchvision, random init: latency does not depend on the weights' values) is pruned with
the project's own path (``plan.decide.prune_one_shot``: groups -> scores -> global selection under a
MACs budget -> structural removal) to each fraction of its MACs removed, with and without rounding
every pruned group's width to a multiple of 8 (``Constraints(round_to=8)``), then timed at batch 1 and
8 against the unpruned model.

The channel choice uses a cheap, data-free criterion. Which channels of a layer go hardly affects
latency; how many go from *each* layer does, and that comes from the criterion's ranking across
layers. On untrained weights that ranking is an artefact of the initialisation, so two criteria are
run by default: ``magnitude`` (torch-pruning's group L2 magnitude; on random init it strips the
groups with small initial norms first) and ``random`` (uniform scores: every group loses about the
same share of its channels, i.e. near-uniform width scaling). A trained model pruned with SInGE gives
its own width profile, so its speed-up at a given MACs fraction can differ from both.

Timing: ``model.eval()``, ``torch.inference_mode()``, NCHW contiguous input (no channels_last), a
fixed number of torch threads (default 1; on a 2-core machine torch's default of 2 threads is several
times slower because of OpenMP spin-waiting), warm-up forwards, then ``--repeats`` timed forwards per
model and batch size. The models are timed round-robin (one forward of each in turn, repeated), so
load from other processes hits every configuration alike; medians and the p25-p75 spread are
reported, with the load average before and after and the share of wall time the process spent on
the CPU during the timed forwards (1.00 = it had a core to itself). Each forward's process CPU time is
recorded too ("CPU ms"): with one thread it leaves out the time the process waited while other
processes had the core, so on a shared machine its median and speed-up are the steadier estimate of
the uncontended latency (they still include slowdowns from shared caches and memory bandwidth; with
more than one thread it sums over the threads and is no longer a latency). By default glibc is told to
keep freed memory (``--malloc keep``, see ``_keep_freed_memory``): otherwise batch-8 forwards on this
VM spend up to ~40% of their time in page faults whose count depends on tensor sizes and allocator
history rather than on the model. oneDNN's kernel cache is enlarged (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``,
see below) so that timing many models in turn does not recompile kernels on every forward.

    uv run python benchmarks/speedup.py                           # full (about 10 minutes)
    uv run python benchmarks/speedup.py --out docs/speedup.md --plot docs/plots/speedup.png
    uv run python benchmarks/speedup.py --smoke                   # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import resource
import statistics
import time
from pathlib import Path

# oneDNN keeps the kernels it JIT-compiles for each convolution shape in an LRU cache of 1024 entries
# by default. Timing ~26 models round-robin (up to ~50 distinct shapes each, more when widths are not
# rounded) cycles through more shapes than that, so every forward would recompile its kernels: on
# this machine that made unrounded MobileNetV2 look no faster than the unpruned model at batch 1. One
# deployed model uses a few dozen shapes, so a cache large enough for all of them is the fair setting.
# Must be set before torch's first convolution; an explicit setting in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")

import torch  # noqa: E402

from singe_dist.atomic import atomic_write, atomic_write_text  # noqa: E402
from singe_dist.engine.latency import cpu_name  # noqa: E402
from singe_dist.models import build_model  # noqa: E402
from singe_dist.plan.cost import measure  # noqa: E402
from singe_dist.plan.decide import Budget, prune_one_shot  # noqa: E402
from singe_dist.plan.select import Constraints, Policy  # noqa: E402
from singe_dist.relevance.criterion_config import CriterionConfig  # noqa: E402
from singe_dist.report import format_table  # noqa: E402

NUM_CLASSES = 1000
ROUNDINGS = (1, 8)


def _keep_freed_memory() -> str:
    """Make glibc keep freed blocks in the heap instead of unmapping them (what jemalloc/tcmalloc do).

    By default glibc serves blocks above its mmap threshold (128 KiB, raised dynamically up to 32 MiB)
    with fresh mmap()s and returns freed heap tops to the kernel, so the activations and oneDNN's
    reorder buffers of a batch-8 forward can page-fault on every call: on this VM ~50,000 minor faults
    per MobileNetV2 forward, ~40% of its CPU time, a cost that depends on the allocator's history and
    on the tensors' sizes, not on the model's arithmetic. Fixing the threshold at its maximum and never
    trimming removes that (the allocation pattern repeats every forward, so memory stays bounded).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):
        ok = False
    return "glibc-keep" if ok else "default (mallopt unavailable)"


def _csv(kind):  # noqa: ANN001, ANN202
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def _build_configs(args: argparse.Namespace) -> list[dict]:
    """The unpruned model and every pruned variant of every model, built (and pruned) up front."""
    size = (3, args.size, args.size)
    configs = []
    for arch in args.models:
        torch.manual_seed(0)
        base_model = build_model(arch, NUM_CLASSES).eval()
        base = measure(base_model, size)
        configs.append({"model": arch, "criterion": "-", "fraction": 0.0, "round_to": "-", "module": base_model,
                        "macs": base.macs, "params": base.params, "base_macs": base.macs, "prune_s": 0.0})
        for criterion in args.criteria:
            for fraction in args.fractions:
                for round_to in ROUNDINGS:
                    torch.manual_seed(0)  # same initial weights as the unpruned model
                    model = build_model(arch, NUM_CLASSES).eval()
                    start = time.perf_counter()
                    _plan, selection = prune_one_shot(
                        model, arch, NUM_CLASSES, size, None, CriterionConfig(name=criterion),
                        Budget("macs", fraction),
                        Policy(constraints=Constraints(round_to=round_to), allocation="global"))  # as recorded
                    prune_s = time.perf_counter() - start
                    footprint = measure(model.eval(), size)
                    configs.append({"model": arch, "criterion": criterion, "fraction": fraction, "round_to": round_to,
                                    "module": model, "macs": footprint.macs, "params": footprint.params,
                                    "base_macs": base.macs, "prune_s": prune_s, "reached": selection.reached})
    return configs


def _time_all(configs: list[dict], batch: int, size: int, repeats: int,
              warmup: int) -> tuple[dict[int, list[float]], dict[int, list[float]], dict[int, list[int]], float]:
    """Wall and CPU ms and page faults per forward of each config, timed round-robin; the overall CPU share."""
    x = torch.randn(batch, 3, size, size)  # NCHW contiguous
    times: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    cpu_times: dict[int, list[float]] = {i: [] for i in range(len(configs))}
    faults: dict[int, list[int]] = {i: [] for i in range(len(configs))}
    wall = cpu = 0.0
    with torch.inference_mode():
        for c in configs:
            for _ in range(warmup):
                c["module"](x)
        for _ in range(repeats):
            for i, c in enumerate(configs):
                flt0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                cpu0, start = time.process_time(), time.perf_counter()
                c["module"](x)
                elapsed = time.perf_counter() - start
                used = time.process_time() - cpu0
                faults[i].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0)
                cpu += used
                wall += elapsed
                times[i].append(1000.0 * elapsed)
                cpu_times[i].append(1000.0 * used)
    return times, cpu_times, faults, cpu / wall if wall else 0.0


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def _plot(path: str, results: list[dict], models: list[str], batch_sizes: list[int], title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(batch_sizes), len(models), figsize=(5.2 * len(models), 3.8 * len(batch_sizes)),
                             squeeze=False)
    styles = {1: "-", 8: "--"}
    colors = {"magnitude": "tab:blue", "random": "tab:green"}
    for row, batch in enumerate(batch_sizes):
        for col, arch in enumerate(models):
            ax = axes[row][col]
            rows = [r for r in results if r["model"] == arch and r["criterion"] != "-"]
            top = max([r["removed"] for r in rows] + [0.5])
            xs = [i / 100 for i in range(0, int(100 * top) + 2)]
            ax.plot([100 * v for v in xs], [1 / (1 - v) for v in xs], ":", color="grey",
                    label="MACs ratio (speed-up if latency ~ MACs)")
            for criterion in dict.fromkeys(r["criterion"] for r in rows):
                for round_to in ROUNDINGS:
                    sel = sorted((r for r in rows if r["criterion"] == criterion and r["round_to"] == round_to),
                                 key=lambda r: r["removed"])
                    if not sel:
                        continue
                    ax.plot([0] + [100 * r["removed"] for r in sel],
                            [1.0] + [r["latency"][str(batch)]["speedup"] for r in sel],
                            styles.get(round_to, "-."), marker="o" if criterion == "magnitude" else "s",
                            color=colors.get(criterion), label=f"{criterion}, round_to={round_to}")
            if arch == "resnet50":
                ax.axhline(1.6, color="red", linewidth=0.8, alpha=0.5)
                ax.plot([50], [1.6], "r*", markersize=10, label="target: 1.6x at 50%")
            ax.set_title(f"{arch}, batch {batch}")
            ax.set_xlabel("MACs removed (%)")
            ax.set_ylabel("speed-up vs unpruned (median)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=_csv(str), default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--fractions", type=_csv(float), default=[0.3, 0.5, 0.7], help="MACs removed")
    parser.add_argument("--batch-sizes", type=_csv(int), default=[1, 8])
    parser.add_argument("--criteria", type=_csv(str), default=["magnitude", "random"],
                        help="data-free criteria for the channel choice (magnitude, random)")
    parser.add_argument("--size", type=int, default=224, help="input resolution (px)")
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per model and batch size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: glibc keeps freed memory (no page faults per forward); default: as is")
    parser.add_argument("--out", help="write the markdown here and the raw numbers beside it (.json)")
    parser.add_argument("--plot", help="PNG: speed-up vs MACs removed")
    parser.add_argument("--smoke", action="store_true", help="64 px, one fraction, batch 1, 2 repeats")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.fractions, args.batch_sizes, args.repeats, args.warmup = 64, [0.5], [1], 2, 1
    for criterion in args.criteria:
        if criterion not in ("magnitude", "random"):
            parser.error(f"--criteria: {criterion!r} is not data-free (magnitude or random)")
    malloc = _keep_freed_memory() if args.malloc == "keep" else "default"
    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    load_before = os.getloadavg()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")  # the start of the run
    start = time.perf_counter()
    configs = _build_configs(args)
    cpu_share, times, cpu_times, faults = {}, {}, {}, {}
    for batch in args.batch_sizes:
        times[batch], cpu_times[batch], faults[batch], cpu_share[batch] = _time_all(
            configs, batch, args.size, args.repeats, args.warmup)
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - start

    results = []
    for i, c in enumerate(configs):
        base_index = next(j for j, b in enumerate(configs) if b["model"] == c["model"] and b["criterion"] == "-")
        entry = {k: c[k] for k in ("model", "criterion", "fraction", "round_to", "macs", "params", "base_macs",
                                   "prune_s")}
        entry["reached"] = c.get("reached", True)
        entry["removed"] = 1.0 - c["macs"] / c["base_macs"]
        entry["latency"] = {}
        for batch in args.batch_sizes:
            q1, median, q3 = _quantiles(times[batch][i])
            base_median = statistics.median(times[batch][base_index])
            cpu_median = statistics.median(cpu_times[batch][i])
            base_cpu = statistics.median(cpu_times[batch][base_index])
            entry["latency"][str(batch)] = {"median_ms": median, "p25_ms": q1, "p75_ms": q3,
                                            "min_ms": min(times[batch][i]), "max_ms": max(times[batch][i]),
                                            "speedup": base_median / median, "cpu_median_ms": cpu_median,
                                            "cpu_speedup": base_cpu / cpu_median, "times_ms": times[batch][i],
                                            "cpu_times_ms": cpu_times[batch][i],
                                            "page_faults_median": statistics.median(faults[batch][i])}
        results.append(entry)

    headers = ["model", "criterion", "MACs removed (budget)", "round_to", "MACs", "MACs removed", "params"]
    for batch in args.batch_sizes:
        headers += [f"b{batch} ms", f"b{batch} p25-p75 ms", f"b{batch} speed-up", f"b{batch} CPU ms",
                    f"b{batch} CPU speed-up"]
    table = []
    for r in results:
        row = [r["model"], r["criterion"], f"{100 * r['fraction']:.0f}%", str(r["round_to"]),
               f"{r['macs'] / 1e6:,.1f}M", f"{100 * r['removed']:.1f}%", f"{r['params'] / 1e6:.2f}M"]
        for batch in args.batch_sizes:
            lat = r["latency"][str(batch)]
            row += [f"{lat['median_ms']:.2f}", f"{lat['p25_ms']:.2f}-{lat['p75_ms']:.2f}", f"{lat['speedup']:.2f}x",
                    f"{lat['cpu_median_ms']:.2f}", f"{lat['cpu_speedup']:.2f}x"]
        table.append(row)

    header = (f"models={','.join(args.models)} input={args.size}x{args.size} batch={','.join(map(str, args.batch_sizes))} "
              f"threads={args.threads} layout=NCHW malloc={malloc} "
              f"onednn_cache={os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY']} repeats={args.repeats} warmup={args.warmup} "
              f"criteria={','.join(args.criteria)} cpu={cpu_name()} ({os.cpu_count()} cores) "
              f"torch={torch.__version__} date={date}")
    load = (f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
            f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; CPU share of the timed forwards "
            + ", ".join(f"b{b} {cpu_share[b]:.2f}" for b in args.batch_sizes)
            + "; page faults per forward (largest config median) "
            + ", ".join(f"b{b} {max(statistics.median(v) for v in faults[b].values()):,.0f}" for b in args.batch_sizes)
            + f"; total {elapsed:.0f} s")
    note = (f"channels chosen by data-free criteria ({', '.join(args.criteria)}) on random weights, not by SInGE: "
            "latency depends on the widths left per layer, not on which channels go")
    missed = [r for r in results if not r["reached"]]
    if missed:
        note += "; BUDGET NOT REACHED for " + ", ".join(
            f"{r['model']} {r['criterion']} {r['fraction']:.0%} round_to={r['round_to']}" for r in missed)
    text = format_table(headers, table)
    print(header)
    print(load)
    print(note)
    print()
    print(text)
    if args.out:
        atomic_write_text(args.out, f"{header}\n\n{load}\n\n{note}\n\n{text}\n")
        meta = {"header": header, "models": args.models, "size": args.size, "batch_sizes": args.batch_sizes,
                "threads": args.threads, "malloc": malloc,
                "onednn_primitive_cache_capacity": os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"], "repeats": args.repeats, "warmup": args.warmup, "criteria": args.criteria,
                "fractions": args.fractions, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                "torch": torch.__version__, "date": date, "load_before": load_before, "load_after": load_after,
                "cpu_share": {str(b): s for b, s in cpu_share.items()}, "total_s": elapsed, "results": results}
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(meta, indent=1))
    if args.plot:
        _plot(args.plot, results, args.models, args.batch_sizes,
              f"CPU latency speed-up of pruned models: median wall-clock, {args.size} px, {args.threads} thread(s), "
              f"{cpu_name()}, torch {torch.__version__}, {date}")


if __name__ == "__main__":
    main()
