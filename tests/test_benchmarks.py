"""Smoke runs of the benchmark scripts: they run from the README's environment and print a table.

Their numbers are not checked here (timings belong in docs/BENCHMARKS.md, not in assertions).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_rows(output: str) -> list[list[str]]:
    rows = [line for line in output.splitlines() if line.startswith("|")]
    assert len(rows) >= 3, output
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert all(len(c) == len(cells[0]) for c in cells), output
    return cells


def test_relevance_cost_smoke() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "relevance_cost.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    header, _sep, *body = _table_rows(proc.stdout)
    assert header[0] == "criterion" and "ratio" in header
    assert {r[0].split(" (")[0] for r in body} == {"singe group", "taylor", "singe channel"}
    for row in body:
        assert float(row[3]) > 0 and row[5].endswith("x")
