"""Smoke runs of every script under benchmarks/: they run from the README's environment and print a table.

(demo_time.py has no smoke mode: it times `make demo`, which CI runs the way the README says.)

Their numbers are not checked here (timings belong in docs/BENCHMARKS.md, not in assertions); the
tables' shapes are, and whatever is deterministic (footprints within budget, rankings never against
themselves).
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from .support import digits_as_fashion_files

ROOT = Path(__file__).resolve().parents[1]


def _tables(output: str) -> list[list[list[str]]]:
    """Every Markdown table in ``output`` (runs of lines starting with ``|``), as rows of stripped cells."""
    tables, current = [], []
    for line in [*output.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            assert len(current) >= 3 and all(len(c) == len(current[0]) for c in current), output
            tables.append(current)
            current = []
    return tables


def _table_rows(output: str) -> list[list[str]]:
    tables = _tables(output)
    assert tables, output
    return tables[0]


def test_relevance_cost_smoke() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "relevance_cost.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    header, _sep, *body = _table_rows(proc.stdout)
    assert header[0] == "criterion" and "ratio" in header
    assert {r[0].split(" (")[0] for r in body} == {"singe group", "taylor", "singe channel"}
    for row in body:
        assert float(row[3]) > 0 and row[5].endswith("x")


def test_relevance_cost_prefix_reuse_smoke() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "relevance_cost.py"), "--smoke", "--prefix-reuse"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    header, _sep, *body = _table_rows(proc.stdout)
    assert header[0] == "path" and [r[0].split(" (")[0] for r in body] == ["group", "channel"]
    for row in body:
        assert float(row[1]) > 0 and float(row[2]) > 0 and float(row[4]) <= 1e-6


def test_quality_gpu_runner_runs_jobs_side_by_side_and_resumes(tmp_path: Path) -> None:
    """benchmarks/quality_gpu.sh (here with DEVICE=cpu): one store per job line, run side by side; a rerun resumes."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# seed|allocation|criterion[|fractions]\n0|uniform|magnitude L2\n\n0|global|random\n"
                    "0|global-cap75|random|0.7\n")  # a line's own fractions replace the shared --fractions
    tiny = ["--dataset", "digits", "--train-iters", "10", "--steps", "1", "--iters", "1", "--final-iters", "1",
            "--batch-size", "32", "--calibration-batches", "1", "--fractions", "0.5"]
    cmd = ["bash", str(ROOT / "benchmarks" / "quality_gpu.sh"), str(tmp_path / "work"), str(tmp_path / "stores"),
           str(jobs), "300", "2", "--", *tiny]
    env = {**os.environ, "DEVICE": "cpu"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(line.split(" ", 1)[0] for line in proc.stdout.splitlines()) == ["done"] * 3 + ["start"] * 3
    stores = sorted((tmp_path / "stores").glob("*.json"))
    assert [p.name for p in stores] == ["s0-global-cap75-random-0p7.json", "s0-global-random.json",
                                        "s0-uniform-magnitude_L2.json"]
    rows = [r for p in stores for r in json.loads(p.read_text())["entwined"]]
    assert {(r["criterion"], r["allocation"], r["target"]) for r in rows} == {
        ("magnitude L2", "uniform", 0.5), ("random", "global", 0.5), ("random", "global-cap75", 0.7)}
    # the capped allocation reached the job: no group lost more than 3/4 of its width
    (capped,) = (tmp_path / "work").glob("s0-random-global-cap75-0.7-*/report.json")
    widths = json.loads(capped.read_text())["channels"].values()
    assert all(w["after"] >= 0.25 * w["before"] for w in widths) and any(w["after"] < w["before"] for w in widths)
    assert all(r["set"] == ["finetune.amp=false", "criterion.max_rows=4096"] for r in rows)
    # a rerun finds every cell stored and computes nothing
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
    assert again.returncode == 0, again.stderr
    assert not any("entwined seed" in p.read_text() for p in (tmp_path / "stores").glob("*.log"))


def test_quality_smoke(tmp_path: Path) -> None:
    """The quality benchmark: one-shot and entwined cells per criterion and allocation, stored, tabulated, plotted."""
    out = tmp_path / "quality"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", "--work", str(tmp_path / "work"),
           "--out", str(out)]
    proc = subprocess.run([*cmd, "--plot", str(tmp_path / "q.png")], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    header, _sep, *body = _table_rows(proc.stdout)
    assert header[:4] == ["MACs removed", "allocation", "criterion", "one-shot, BN re-estimated"]
    assert [(r[1], r[2]) for r in body] == [(a, c) for a in ("global", "uniform")
                                            for c in ("singe group signed", "taylor", "magnitude L2")]
    for row in body:
        assert row[0] == "50%"
        for cell in row[3:6]:
            mean, spread = (float(v) for v in cell.split(" ± "))
            assert 0.0 <= mean <= 1.0 and spread == 0.0  # one seed: no spread
    stored = json.loads(out.with_suffix(".json").read_text())
    assert len(stored["oneshot"]) == len(stored["entwined"]) == 6 and set(stored["baselines"]) == {"0"}
    assert all(0.45 <= r["removed"] <= 0.55 for r in stored["entwined"])  # the 50% budget, within a unit
    # the default chosen on the development split: every complete entwined setting ranked by its mean
    _grid, (dev_header, _, *dev_rows), *verdicts = _tables(proc.stdout)
    assert dev_header[:2] == ["criterion", "allocation"] and len(dev_rows) == 6
    means = [float(r[dev_header.index("mean (decides)")]) for r in dev_rows]
    assert means == sorted(means, reverse=True)
    winner = (dev_rows[0][0], dev_rows[0][1])
    # the goal check of that winner (and of SInGE's best setting if the winner is a baseline)
    assert 1 <= len(verdicts) <= 2 and (len(verdicts) == 2) == (not winner[0].startswith("singe"))
    for header, _, *rows in verdicts:
        assert header[3] in {r[0] for r in dev_rows}
        assert {r[1] for r in rows} == {"one-shot", "short FT", "long FT"}
        assert all(r[2].split(" (")[0] != header[3] for r in rows)  # never against itself
        assert all(r[6] == "no" for r in rows)  # one seed has no spread: it cannot show a win
    assert len(_tables(out.with_suffix(".md").read_text())) == 2 + len(verdicts)
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
    # a second invocation resumes: every cell is stored, so nothing is recomputed
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert "[1/" not in again.stdout and "one-shot seed" not in again.stdout
    assert _tables(again.stdout) == _tables(proc.stdout)
    # --merge tabulates stored cells without computing; its header names no machine of its own (the cells' are
    # in their stores)
    merged = subprocess.run([*cmd[:2], "--smoke", "--merge", str(out.with_suffix(".json"))], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert merged.returncode == 0, merged.stderr
    assert _tables(merged.stdout) == _tables(proc.stdout)
    assert "merged from 1 stores" in merged.stdout and "torch=" not in merged.stdout and "torch=" in proc.stdout
    # a store measured on another seed-0 baseline (retrained elsewhere) is refused, in one line, by a merge and by
    # a run resuming into it: its cells are not comparable
    other = json.loads(out.with_suffix(".json").read_text())
    other["baselines"]["0"]["test_top1"] += 0.01
    (tmp_path / "other.json").write_text(json.dumps(other))
    mixed = subprocess.run([*cmd[:2], "--smoke", "--merge", str(out.with_suffix(".json")), str(tmp_path / "other.json")],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert mixed.returncode != 0 and mixed.stderr.strip().count("\n") == 0
    assert "other.json holds a seed-0 baseline" in mixed.stderr and "not comparable" in mixed.stderr
    resumed = subprocess.run([*cmd[:-1], str(tmp_path / "other")], capture_output=True, text=True, timeout=120,
                             cwd=ROOT)
    assert resumed.returncode != 0 and "not comparable" in resumed.stderr
    assert json.loads((tmp_path / "other.json").read_text()) == other  # nothing already written is lost


def test_fair_fight_smoke(tmp_path: Path) -> None:
    """Protocol v2: a baseline with its development curve, our row and Torch-Pruning's at two budgets, stored,
    resumed and merged into one table and plot."""
    out = tmp_path / "fair"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fair_fight.py"), "--smoke", "--work", str(tmp_path / "work"),
           "--out", str(out), "--recipes", "default", "tp magnitude uniform", "--budgets", "none", "short"]
    proc = subprocess.run([*cmd, "--plot", str(tmp_path / "f.png")], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    header, _sep, *body = _table_rows(proc.stdout)
    assert header == ["fine-tuning", "recipe", "50% MACs removed", "training passes"]
    assert [(r[0], r[1]) for r in body] == [(b, r) for b in ("none", "short") for r in ("default", "tp magnitude uniform")]
    stored = json.loads(out.with_suffix(".json").read_text())
    assert len(stored["baselines"]["0"]["curve"]) == 2  # --smoke: two epochs, each with its development top-1
    cells = {(c["recipe"], c["budget"]): c for c in stored["cells"]}
    assert all(0.45 <= c["removed"] <= 0.55 for c in cells.values())  # the same 50% target, within a unit
    assert cells[("default", "none")]["finetune_iters"] == cells[("tp magnitude uniform", "none")]["finetune_iters"] == 0
    assert cells[("default", "short")]["finetune_iters"] == cells[("tp magnitude uniform", "short")]["finetune_iters"] > 0
    assert cells[("tp magnitude uniform", "short")]["tp_steps"] > 1  # Torch-Pruning's own progressive loop
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0 and "[1/" not in again.stdout  # every cell stored: nothing recomputed
    merged = subprocess.run([*cmd[:2], "--merge", str(out.with_suffix(".json"))], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert merged.returncode == 0, merged.stderr
    assert _tables(merged.stdout)[0][2:] == _tables(proc.stdout)[0][2:]


def test_search_proxy_smoke(tmp_path: Path) -> None:
    """Issue 28's proxy check: uniform is candidate 1, every candidate meets the budget and is scored as the
    job's search scores it (the script refuses otherwise), a rerun recomputes nothing, and the table holds one
    Spearman row per score and seed."""
    out = tmp_path / "proxy"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "search_proxy.py"), "--smoke", "--work", str(tmp_path / "work"),
           "--out", str(out), "--candidates", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert sorted((r["seed"], r["candidate"]) for r in rows) == [(s, c) for s in (0, 1) for c in range(3)]
    assert all(set(r["weights"].values()) == {1.0} for r in rows if r["candidate"] == 0)
    assert any(set(r["weights"].values()) != {1.0} for r in rows if r["candidate"] > 0)
    assert all(0.5 - 0.05 <= r["removed"] <= 0.6 for r in rows)  # --smoke's 50% target, within a unit
    header, _sep, *body = _table_rows(proc.stdout)
    assert header[3:5] == ["score", "Spearman"]
    assert {(r[0], r[3]) for r in body} == {(s, k) for s in ("0", "1") for k in (
        "loss_32", "top1_32", "loss_64", "top1_64", "loss_128", "top1_128", "pre_loss_64", "pre_top1_64")}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and "candidate 1/" not in again.stdout  # every candidate stored
    other = subprocess.run([*cmd, "--pre-iters", "0"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert other.returncode != 0 and "other settings (pre_iters)" in other.stderr  # never mixed into one table


def test_search_cost_smoke(tmp_path: Path) -> None:
    """Issue 28's cost: a searched job's own search seconds (the report's phase) per candidate, and one
    candidate's bookkeeping timed apart."""
    out = tmp_path / "cost"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_cost.py"), "--smoke", "--work",
                           str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    header, _sep, *body = _table_rows(proc.stdout)
    assert header == ["workers", "candidates scored", "search s", "candidates/s"] and [r[:2] for r in body] == [["1", "3"]]
    stored = json.loads(out.with_suffix(".json").read_text())
    assert stored["jobs"][0]["search_s"] > 0 and stored["bookkeeping"]["groups"] > 0


def test_search_proxy_spearman_matches_scipy() -> None:
    """The proxy's rank correlation, ties included, is Spearman's (scipy's, which the script does not import)."""
    import random

    from scipy.stats import spearmanr

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from search_proxy import spearman

    rng = random.Random(0)
    for _ in range(20):
        a = [rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in range(12)]
        b = [rng.random() for _ in range(12)]
        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_fair_fight_gpu_runner_runs_jobs_side_by_side_and_resumes(tmp_path: Path) -> None:
    """benchmarks/fair_fight_gpu.sh (here with DEVICE=cpu): the baseline first, then one store per job line."""
    stores = tmp_path / "stores"
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"# fair_fight.py arguments\n--seeds 0 --recipes default --budgets none --out {stores}/a\n\n"
                    f"--seeds 0 --recipes 'tp magnitude uniform' --budgets none --out {stores}/b\n")
    cmd = ["bash", str(ROOT / "benchmarks" / "fair_fight_gpu.sh"), str(tmp_path / "work"), str(jobs), "300", "2"]
    env = {**os.environ, "DEVICE": "cpu", "SEEDS": "0", "COMMON": "--smoke"}
    stores.mkdir()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(line.split(" ", 1)[0] for line in proc.stdout.splitlines()) == ["done"] * 2 + ["start"] * 2
    cells = {p.name: json.loads(p.read_text())["cells"] for p in stores.glob("*.json")}
    assert {name: [c["recipe"] for c in rows] for name, rows in cells.items()} == {
        "a.json": ["default"], "b.json": ["tp magnitude uniform"]}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
    assert again.returncode == 0, again.stderr
    assert not any("[1/" in p.read_text() for p in (tmp_path / "work").glob("job-*.log"))


def test_quality_greedy_one_shot_stops_at_each_budget(tmp_path: Path) -> None:
    """Part (i) of a greedy setting: relevance re-estimated every 10% of MACs, a cell stored at each budget, for
    an allocation with a limit too (its policy read from the job config, as the entwined job reads it)."""
    out = tmp_path / "greedy"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--dataset", "digits",
                           "--train-iters", "10", "--batch-size", "32", "--calibration-batches", "1", "--seeds", "0",
                           "--phase", "oneshot", "--criteria", "taylor greedy", "--fractions", "0.1", "0.2",
                           "--allocations", "global-cap75", "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.with_suffix(".json").read_text())["oneshot"]
    assert sorted((r["allocation"], r["target"], r["stages"]) for r in rows) == [("global-cap75", 0.1, 1),
                                                                                 ("global-cap75", 0.2, 2)]


def test_quality_diagnosis_smoke(tmp_path: Path) -> None:
    """--diagnose: each criterion against leave-one-out on the calibration images and on held-out ones."""
    out = tmp_path / "diagnosis"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--smoke", "--work",
                           str(tmp_path / "work"), "--diagnose", "0.5", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (head, _, *rows), (_strip_head, _, *strips), (held_head, _, *held) = _tables(proc.stdout)
    criteria = ["singe group signed", "taylor", "magnitude L2"]
    assert [r[0] for r in rows] == [r[0] for r in strips] == criteria
    assert [r[0] for r in held] == ["leave-one-out on the calibration images", *criteria]
    assert held_head[-1] == "within-group Spearman (mean over groups)"
    assert "on 64 held-out images of the development split" in proc.stdout
    for row in [*rows, *held]:
        assert all(-1.0 <= float(v) <= 1.0 for v in row[1:3])
    assert _tables(out.with_suffix(".md").read_text()) == _tables(proc.stdout)


@pytest.mark.timeout(900)  # Ray start-up and two worker groups: minutes when the CPUs are busy
def test_scaling_smoke(tmp_path: Path) -> None:
    """benchmarks/scaling.py: relevance on 1 and 2 Ray Train workers of a local runtime of its own (127.0.0.1)."""
    out = tmp_path / "scaling.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own runtime, as a laptop user has
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=840, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, _sep, *body = _table_rows(proc.stdout)
    assert header[0] == "workers" and [r[0] for r in body] == ["1", "2"]
    results = json.loads(out.read_text())["results"]
    # the same calibration set and model on either world size: the one all-reduce moves the same table
    assert results["1"]["allreduce_bytes"] == results["2"]["allreduce_bytes"] > 0
    assert results["1"]["samples"] == results["2"]["samples"] == 16


def test_gpu_script_smoke() -> None:
    """gpu.sh's CPU smoke mode: relevance, training and a 2-rank DDP (Gloo) measurement in one table."""
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke"], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("device=CPU")
    header, _sep, *body = _table_rows(proc.stdout)
    assert header == ["measurement", "precision", "throughput", "unit", "vs fp32 training"]
    names = [r[0] for r in body]
    assert names[:3] == ["relevance (SInGE group path)", "relevance gated passes", "training step"]
    assert names[-1] == "DDP fine-tune, 2 rank(s)"
    for row in body:
        assert float(row[2].replace(",", "")) > 0 and row[4].endswith("x")


# benchmarks/data_throughput.py: images per second of each reader
def test_data_throughput_smoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "data_throughput.py"), "--smoke"])
    runpy.run_path(str(ROOT / "benchmarks" / "data_throughput.py"), run_name="__main__")
    tables = [block for block in capsys.readouterr().out.split("\n\n") if block.lstrip().startswith("|")]
    assert tables, "no markdown table printed"
    lines = tables[0].strip().splitlines()
    width = lines[0].count("|")
    assert re.fullmatch(r"\|( *:?-+:? *\|)+", lines[1])
    assert len(lines) >= 4 and all(line.count("|") == width for line in lines)
    readers = {line.split("|")[1].strip() for line in lines[2:]}
    assert readers == {"webdataset shards (singe-dist reader)", "torchvision ImageFolder (PIL recipe)",
                       "ImageFolder, singe-dist decode + transforms"}
    column = [cell.strip() for cell in lines[0].split("|")].index("images/s")
    speeds = [float(line.split("|")[column]) for line in lines[2:]]
    assert all(speed > 0 for speed in speeds)


# benchmarks/speedup.py: latency of pruned models; timings unchecked, footprints within the budget
SPEEDUP_MODELS = ("resnet50", "mobilenet_v2")
SPEEDUP_CRITERIA = ("magnitude", "random")


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
    for m in SPEEDUP_MODELS:
        expected.append((m, "-", "0%", "-"))
        expected += [(m, c, "50%", r) for c in SPEEDUP_CRITERIA for r in ("1", "8")]
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


# benchmarks/memory_soak.py: resident memory per step (docs/RELIABILITY.md)
def test_memory_soak_benchmark_smoke(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "memory_soak.py"), "--smoke"])
    runpy.run_path(str(ROOT / "benchmarks" / "memory_soak.py"), run_name="__main__")
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].replace(" ", "") == "|step|RSSMB|deltaMB|" and re.fullmatch(r"\|[-|]+\|", table[1])
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and all(float(r[1]) > 50 for r in rows)
    assert re.search(r"^slope over the second half: [+-]\d+\.\d+ MB/step", out, re.MULTILINE), out


# benchmarks/onnx_latency.py: ONNX Runtime latency of a pruned model (docs/BENCHMARKS.md)
def test_onnx_latency_smoke() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "onnx_latency.py"), "--smoke"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    header_line = proc.stdout.splitlines()[0]
    for key in ("model=resnet18", "input=64x64", "intra_op_threads=1", "onnxruntime=", "date="):
        assert key in header_line, header_line
    header, _sep, *body = _table_rows(proc.stdout)
    assert header[:6] == ["model", "MACs removed (budget)", "MACs", "MACs removed", "params", "ONNX MB"]
    assert header[6:] == [f"b{b} {c}" for b in (1, 8) for c in ("ms", "p25-p75 ms", "speed-up", "CPU ms",
                                                                 "CPU speed-up")]
    assert [r[:2] for r in body] == [["resnet18", "0%"], ["resnet18", "50%"]]
    assert float(body[1][3].rstrip("%")) >= 50.0 and body[0][8] == body[0][10] == "1.00x"
    for row in body:
        assert all(float(cell.rstrip("x")) > 0 for cell in row[6:] if "-" not in cell)


# benchmarks/imagenet_rehearsal{,_data}.py: the data set and the relevance measurements (the job itself:
# tests/test_flagship.py)
def test_imagenet_rehearsal_data_and_measurement_smoke(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "imagenet_rehearsal_data.py"), "--out",
                           str(tmp_path / "data"), "--classes", "3", "--max-side", "40", "--per-shard", "4",
                           "--fashion-dir", str(digits_as_fashion_files(tmp_path / "garments"))],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["images"] == {"train": 6, "val": 3} and info["train"]["shards"] == 2
    assert sorted(p.name for p in (tmp_path / "data/images/train").iterdir()) == ["n01440764", "n01448683", "n01456602"]
    assert max(max(size) for size in info["example_sizes"]) <= 40
    for path, extra in (("group", []), ("channel", ["--channel-share", "512"])):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "imagenet_rehearsal.py"), "--measure-relevance",
                               "--shard", info["val"]["first_shard"], "--num-classes", "3", "--image-size", "32",
                               "--path", path, "--max-rows", "8", *extra],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        assert m["seconds"] > 0 and m["peak_rss_mb"] >= m["rss_before_mb"] and m["samples_counted"] == 1
        assert (m["rows"] == 8 * m["groups"]) if path == "group" else (0 < m["rows"] < 8 * m["channels"])
        assert m["allreduce_bytes"] > 0
        assert (m["training_pass_s_per_image"] is not None) == (path == "group")
