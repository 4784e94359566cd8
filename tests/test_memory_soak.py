"""The memory soak benchmark (benchmarks/memory_soak.py) runs and prints its table (docs/RELIABILITY.md)."""

from __future__ import annotations

import re
import runpy
import sys

from .support import REPO_ROOT

SOAK = REPO_ROOT / "benchmarks" / "memory_soak.py"


def test_memory_soak_benchmark_smoke(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [str(SOAK), "--smoke"])
    runpy.run_path(str(SOAK), run_name="__main__")
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].replace(" ", "") == "|step|RSSMB|deltaMB|" and re.fullmatch(r"\|[-|]+\|", table[1])
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and all(float(r[1]) > 50 for r in rows)
    assert re.search(r"^slope over the second half: [+-]\d+\.\d+ MB/step", out, re.MULTILINE), out
