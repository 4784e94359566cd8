"""The run report (``report.json``): its format, how a job builds it, and how it is shown.

One dict per run, built by the pruning loop with the functions below, kept in every job checkpoint (a
resumed run continues it) and written by rank 0 to ``report.json``; the tracker (metrics, plots), the
CLI and the demo read it. Layout (:data:`REPORT_FORMAT`):

- ``format``, ``config`` (flattened ``section.key``), ``world_size``, ``original`` (MACs and
  parameters of the unpruned architecture: 100% of the budget)
- ``baseline``: top-1, top-5, loss and samples of the starting model, its MACs and parameters
- ``steps``: one row per pruning step (:func:`step_row`; ``pruned`` and ``finetuned`` evaluations, each
  left out when ``run.eval_after_prune`` or ``run.eval_after_step`` is off)
- ``final``: the evaluation after the final fine-tune, MACs, parameters, fraction removed
- ``wall_time_s`` (seconds per phase), ``latency``, ``channels`` (per group, before and after),
  ``plan_digest``; ``peak_memory_mb`` (per rank: ``rss`` of its process, ``cuda`` on GPU);
  ``tracking_lost`` when tracking stopped mid-run

Also here: the plain text tables printed to the terminal (:func:`format_table`, :func:`human`), used
by the summary table and the benchmarks.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Protocol

REPORT_FORMAT = "singe-dist/report/v1"
WALL_PHASES = ("baseline_eval", "relevance", "finetune", "eval")  # present from the start; others when reached


class Cost(Protocol):
    """What :func:`singe_dist.plan.cost.measure` returns."""

    macs: int
    params: int

    def get(self, metric: str) -> float: ...


def new_report(config: dict[str, Any], world_size: int, original: Cost) -> dict[str, Any]:
    """The report of a run that starts: ``config`` flattened, ``original`` the unpruned architecture's cost."""
    return {"format": REPORT_FORMAT, "config": config, "world_size": world_size,
            "original": {"macs": original.macs, "params": original.params}, "steps": [],
            "wall_time_s": {phase: 0.0 for phase in WALL_PHASES}}


def add_wall_time(report: dict[str, Any], phase: str, seconds: float) -> None:
    walls = report["wall_time_s"]
    walls[phase] = walls.get(phase, 0.0) + seconds


def fraction_removed(cost: Cost, original: Cost, metric: str) -> float:
    return 1 - cost.get(metric) / original.get(metric)


def baseline_entry(evaluation: dict[str, float], cost: Cost) -> dict[str, Any]:
    return {**evaluation, "macs": cost.macs, "params": cost.params}


def baseline_metrics(report: dict[str, Any], cost: Cost, original: Cost, metric: str) -> dict[str, float]:
    """The tracker's metrics of step 0 (the baseline)."""
    b = report["baseline"]
    return {"top1": b["top1"], "top5": b["top5"], "loss": b["loss"], "macs": cost.macs, "params": cost.params,
            "fraction_removed": fraction_removed(cost, original, metric)}


def step_row(step: int, target_fraction: float, cost: Cost, original: Cost, metric: str, channels_removed: int,
             relevance_s: float, budget_reached: bool, target: float, last_unit_cost: float) -> dict[str, Any]:
    """A pruning step's row once its channels are removed (1-based ``step``); fine-tuning adds to it."""
    return {"step": step, "target_fraction": target_fraction,
            "fraction_removed": fraction_removed(cost, original, metric), "macs": cost.macs, "params": cost.params,
            "channels_removed": channels_removed, "relevance_s": relevance_s, "budget_reached": budget_reached,
            "target": target, "last_unit_cost": last_unit_cost}


def finish_row(row: dict[str, Any], finetune_loss: float, finetune_s: float, finetuned: dict[str, float] | None,
               eval_s: float, skipped_samples: int) -> dict[str, Any]:
    """What the step's fine-tuning and evaluation add to its row (no ``finetuned`` entry where
    ``run.eval_after_step`` is off)."""
    row.update({"finetune_loss": finetune_loss, "finetune_s": finetune_s, "eval_s": eval_s,
                "skipped_samples": skipped_samples, **({"finetuned": finetuned} if finetuned else {})})
    return row


def step_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The tracker's metrics of a finished step row."""
    metrics = {"macs": row["macs"], "params": row["params"], "fraction_removed": row["fraction_removed"],
               "relevance_s": row["relevance_s"], "finetune_s": row["finetune_s"],
               "skipped_samples": row["skipped_samples"], "channels_removed": row["channels_removed"]}
    for key in ("top1", "top5", "loss"):
        if "finetuned" in row:
            metrics[key] = row["finetuned"][key]
        if "pruned" in row:
            metrics[f"pruned_{key}"] = row["pruned"][key]
    return metrics


def final_entry(evaluation: dict[str, float], cost: Cost, original: Cost, metric: str) -> dict[str, Any]:
    return {**evaluation, "macs": cost.macs, "params": cost.params,
            "fraction_removed": fraction_removed(cost, original, metric)}


def final_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The run's outcome as single-valued metrics (``final_top1``, ``final_macs``, ``top1_drop``, latency...)."""
    out: dict[str, float] = {}
    final, base = report.get("final") or {}, report.get("baseline") or {}
    for key in ("top1", "top5", "loss", "macs", "params", "fraction_removed"):
        if is_number(final.get(key)):
            out[f"final_{key}"] = float(final[key])
    for key in ("top1", "top5"):
        if is_number(final.get(key)) and is_number(base.get(key)):
            out[f"{key}_drop"] = float(base[key]) - float(final[key])
    for which, lat in (report.get("latency") or {}).items():
        for key, value in (lat or {}).items():
            if is_number(value):
                out[f"latency_{which}_{key}"] = float(value)
    total = (report.get("wall_time_s") or {}).get("total")
    if is_number(total):
        out["wall_time_total_s"] = float(total)
    return out


def is_number(value: Any) -> bool:
    """A finite real number (numpy scalars too); booleans, strings and NaN are not metrics."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def summary_table(report: dict[str, Any]) -> str:
    """The before/after table printed at the end of a run."""
    base, final = report["baseline"], report["final"]
    lat = report.get("latency", {})
    rows = [["baseline", base["top1"], base["top5"], human(base["params"]), human(base["macs"]),
             f"{lat.get('baseline', {}).get('cpu_b1_ms', float('nan')):.2f}"]]
    for r in report["steps"]:
        done = r.get("finetuned") or {"top1": "-", "top5": "-"}  # run.eval_after_step=false: not evaluated
        rows.append([f"step {r['step']}", done["top1"], done["top5"], human(r["params"]), human(r["macs"]), ""])
    rows.append(["final", final["top1"], final["top5"], human(final["params"]), human(final["macs"]),
                 f"{lat.get('final', {}).get('cpu_b1_ms', float('nan')):.2f}"])
    return format_table(["model", "top-1", "top-5", "params", "MACs", "CPU ms (b=1)"], rows)


# ----------------------------------------------------------------------------------- text tables
def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
