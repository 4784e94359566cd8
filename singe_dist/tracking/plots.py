"""Plots of a pruning run, as PNG files: pure functions, data in, path of the written PNG out.

They draw on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, never through ``pyplot``:
no global figure state, no display needed, safe to call from any thread or a headless cluster node.
The MLflow tracker logs them as artifacts; anything else (a report command, a notebook) may reuse them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def accuracy_points(report: Mapping[str, Any], metric: str = "top1") -> list[tuple[str, float, float]]:
    """``(label, macs, accuracy)`` in run order: baseline, each step pruned then fine-tuned, final.

    Points whose accuracy is missing (no ``pruned`` evaluation, a run that has not finished) are skipped.
    """
    points: list[tuple[str, float, float]] = []
    base = report.get("baseline") or {}
    if _finite(base.get(metric)) and _finite(base.get("macs")):
        points.append(("baseline", base["macs"], base[metric]))
    for row in report.get("steps") or []:
        for kind in ("pruned", "finetuned"):
            value = (row.get(kind) or {}).get(metric)
            if _finite(value) and _finite(row.get("macs")):
                points.append((f"step {row.get('step')} {kind}", row["macs"], value))
    final = report.get("final") or {}
    if _finite(final.get(metric)) and _finite(final.get("macs")):
        points.append(("final", final["macs"], final[metric]))
    return points


def plot_accuracy_vs_macs(report: Mapping[str, Any], path: PathLike, metric: str = "top1",
                          title: str | None = None) -> Path:
    """Accuracy against MACs across the run (a saw-tooth: pruning drops it, fine-tuning recovers it)."""
    points = accuracy_points(report, metric)
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    if points:
        macs = [p[1] / 1e6 for p in points]
        acc = [p[2] for p in points]
        ax.plot(macs, acc, color="0.6", linewidth=1, zorder=1)
        styles = {"baseline": ("s", "tab:blue"), "pruned": ("v", "tab:red"), "finetuned": ("o", "tab:green"),
                  "final": ("*", "tab:purple")}
        for kind, (marker, color) in styles.items():
            sel = [(m, a) for (label, _, _), m, a in zip(points, macs, acc) if label == kind or label.endswith(kind)]
            if sel:
                ax.scatter([s[0] for s in sel], [s[1] for s in sel], marker=marker, color=color, label=kind,
                           s=90 if kind == "final" else 40, zorder=2)
        for (label, _, _), m, a in zip(points, macs, acc):
            if label.endswith("finetuned"):
                ax.annotate(label.split()[1], (m, a), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.invert_xaxis()  # the run moves right as it removes MACs
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluations yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"{metric} vs MACs")
    return _save(fig, path)


def plot_channels(channels: Mapping[str, Mapping[str, Any]], path: PathLike, title: str | None = None) -> Path:
    """Channels kept per group (layer): the original width and the width after pruning, side by side."""
    names = list(channels)
    before = [channels[n].get("before") or 0 for n in names]
    after = [channels[n].get("after") or 0 for n in names]
    fig = _figure(8, max(2.5, 0.28 * len(names) + 1.2))
    ax = fig.add_subplot()
    ys = list(range(len(names)))
    ax.barh([y + 0.2 for y in ys], before, height=0.4, color="0.75", label="before")
    ax.barh([y - 0.2 for y in ys], after, height=0.4, color="tab:blue", label="after")
    for y, b, a in zip(ys, before, after):
        if b:
            ax.text(max(a, b), y, f" {a}/{b} ({a / b:.0%})", va="center", fontsize=7)
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()  # first layer on top
    ax.set_xlabel("channels")
    ax.margins(x=0.18)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    kept, total = sum(after), sum(before)
    ax.set_title(title or (f"channels kept per layer: {kept}/{total}" + (f" ({kept / total:.0%})" if total else "")))
    return _save(fig, path)


def plot_relevance_histogram(relevance: Mapping[str, Iterable[float]], path: PathLike, title: str | None = None,
                             bins: int = 50) -> Path:
    """Histogram of the relevance scores of every channel of every group (one pruning step)."""
    values = [float(v) for scores in relevance.values() for v in scores if _finite(float(v))]
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    if values:
        ax.hist(values, bins=bins, color="tab:blue", alpha=0.85)
        ax.axvline(0.0, color="0.3", linewidth=0.8)
        lo, hi = min(values), max(values)
        ax.text(0.99, 0.97, f"{len(values)} channels, {len(relevance)} groups\nmin {lo:.3g}, max {hi:.3g}",
                ha="right", va="top", transform=ax.transAxes, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("relevance")
    ax.set_ylabel("channels")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "relevance")
    return _save(fig, path)


def plot_report(report: Mapping[str, Any], out_dir: PathLike) -> list[Path]:
    """The plots a finished report allows: accuracy vs MACs, and channels kept (when the report has them)."""
    out_dir = Path(out_dir)
    paths = [plot_accuracy_vs_macs(report, out_dir / "accuracy_vs_macs.png")]
    if report.get("channels"):
        paths.append(plot_channels(report["channels"], out_dir / "channels_per_layer.png"))
    return paths


__all__: Sequence[str] = ["accuracy_points", "plot_accuracy_vs_macs", "plot_channels", "plot_relevance_histogram",
                          "plot_report"]
