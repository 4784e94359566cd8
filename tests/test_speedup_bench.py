"""Smoke run of benchmarks/speedup.py: a well-formed latency table, one row per configuration.

Timings are not checked (they belong in docs/BENCHMARKS.md); only the table's shape and the
footprints, which are deterministic: every pruned model is smaller than its unpruned model and
within its MACs budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .test_benchmarks import ROOT, _table_rows

MODELS = ("resnet50", "mobilenet_v2")
CRITERIA = ("magnitude", "random")


def _millions(cell: str) -> float:
    assert cell.endswith("M"), cell
    return float(cell[:-1].replace(",", ""))


def test_speedup_smoke(tmp_path: Path) -> None:
    out = tmp_path / "speedup.md"
    plot = tmp_path / "speedup.png"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speedup.py"), "--smoke",
                           "--out", str(out), "--plot", str(plot)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    header_line = proc.stdout.splitlines()[0]
    for key in ("models=", "input=64x64", "threads=1", "cpu=", "torch=", "date="):
        assert key in header_line, header_line

    header, _sep, *body = _table_rows(proc.stdout)
    assert header[:7] == ["model", "criterion", "MACs removed (budget)", "round_to", "MACs", "MACs removed", "params"]
    assert header[7:] == ["b1 ms", "b1 p25-p75 ms", "b1 speed-up", "b1 CPU ms", "b1 CPU speed-up"]
    # per model: the unpruned row, then criterion x round_to (1, 8) at the one smoke fraction (50%)
    expected = []
    for m in MODELS:
        expected.append((m, "-", "0%", "-"))
        expected += [(m, c, "50%", r) for c in CRITERIA for r in ("1", "8")]
    assert [tuple(r[:4]) for r in body] == expected

    base_macs = {r[0]: _millions(r[4]) for r in body if r[1] == "-"}
    for row in body:
        ms, spread, speedup, cpu_ms, cpu_speedup = row[7:12]
        assert float(ms) > 0 and float(cpu_ms) > 0
        low, high = (float(v) for v in spread.split("-"))
        assert 0 < low <= high
        for cell in (speedup, cpu_speedup):
            assert cell.endswith("x") and float(cell[:-1]) > 0
        if row[1] == "-":
            assert speedup == cpu_speedup == "1.00x" and row[5] == "0.0%"
            continue
        macs = _millions(row[4])
        assert macs < base_macs[row[0]]
        assert macs <= 0.5 * base_macs[row[0]] + 0.1  # within the 50% budget (table rounds to 0.1M)
        assert float(row[5].rstrip("%")) >= 50.0

    # the files: the same table in markdown, exact numbers in JSON, a PNG
    assert out.read_text().count("\n|") == len(body) + 2  # header, separator, rows
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["threads"] == 1 and len(data["results"]) == len(body)
    for r in data["results"]:
        assert r["macs"] <= (1.0 - r["fraction"]) * r["base_macs"]
        assert r["latency"]["1"]["median_ms"] > 0 and len(r["latency"]["1"]["times_ms"]) == 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
