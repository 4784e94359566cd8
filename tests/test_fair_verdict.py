"""The fair fight's registered rules (benchmarks/fair_verdict.py) on hand-built cells: each rule's edge."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fair_verdict import length_check, must_shows, reconstruct_rule  # noqa: E402

FRACTIONS, BUDGETS = (0.5, 0.7, 0.85), ("none", "short", "long")


def _cell(recipe: str, seed: int, fraction: float, budget: str, top1: float, dev: float | None = None) -> dict:
    return {"recipe": recipe, "seed": seed, "target": fraction, "budget": budget, "top1": top1,
            "dev_top1": top1 if dev is None else dev}


def _grid(recipe: str, value, seeds=(0, 1)) -> list[dict]:  # noqa: ANN001 (value: (seed, fraction, budget) -> top-1)
    return [_cell(recipe, s, f, b, value(s, f, b)) for s in seeds for f in FRACTIONS for b in BUDGETS]


@pytest.mark.parametrize(("gain", "converged"), [(0.0029, True), (0.0031, False)])
def test_length_check_counts_the_shorter_converged_only_under_0_3_points(gain: float, converged: bool) -> None:
    shorter = {"seed": 0, "iters": 100, "dev_top1": 0.9}
    line = length_check(shorter, {"seed": 0, "iters": 200, "dev_top1": 0.9 + gain})
    assert ("NOT converged" not in line) is converged and f"{gain * 100:+.2f} points" in line


@pytest.mark.parametrize(("short_long_diff", "none_diff", "outcome"), [
    (-0.0009, 0.2, "becomes the default"),
    (-0.0011, 0.2, "becomes the advice for little or no fine-tuning"),
    (0.01, -0.001, "no change"),
])
def test_reconstruction_rule(short_long_diff: float, none_diff: float, outcome: str) -> None:
    default = _grid("default", lambda s, f, b: 0.9 - 0.001 * s)
    recon = _grid("default reconstruct",
                  lambda s, f, b: 0.9 - 0.001 * s + (none_diff if b == "none" else short_long_diff))
    assert outcome in reconstruct_rule(default + recon)


def test_reconstruction_rule_waits_for_every_seed_of_both_rows() -> None:
    default = _grid("default", lambda s, f, b: 0.9)
    recon = _grid("default reconstruct", lambda s, f, b: 0.95)
    assert "incomplete" in reconstruct_rule(default + recon[:-1])


def test_must_shows_weigh_the_margin_against_the_seed_spread() -> None:
    # ours leads the peer by 1 point at 70%, by 0.1 at 85%; the seeds differ by 0.4 points (spread 0.28)
    ours = _grid("default", lambda s, f, b: 0.5 if b == "none" else {0.5: 0.93, 0.7: 0.91, 0.85: 0.881}[f] - 0.004 * s)
    peer = _grid("tp magnitude uniform", lambda s, f, b: 0.4 if b == "none" else {0.5: 0.92, 0.7: 0.90, 0.85: 0.88}[f])
    lines = must_shows(ours + peer, unpruned_test=0.9325)
    assert "70% long: default beats Torch-Pruning's own recipes by more than the spread" in "\n".join(lines)
    assert "85% long: default level with Torch-Pruning's own recipes within the spread" in "\n".join(lines)
    assert any("NO, 0.45 points below" in line for line in lines)  # 0.9325 - mean(0.93, 0.926)
    assert lines[-1].startswith("No fine-tuning, default the best row: yes")


def test_must_shows_name_a_row_that_is_behind_or_beaten_without_fine_tuning() -> None:
    ours = _grid("default", lambda s, f, b: 0.30 if b == "none" else 0.90)
    peer = _grid("tp taylor", lambda s, f, b: 0.35 if b == "none" else 0.90)
    lines = must_shows(ours + peer, unpruned_test=0.9)
    assert any(line.startswith("70% none: default BEHIND one of Torch-Pruning's own") for line in lines)
    assert "NO (50%: tp taylor 0.3500 against 0.3000" in lines[-1]
    lacking = [c for c in peer if (c["seed"], c["target"], c["budget"]) != (0, 0.7, "none")]
    assert "incomplete" in must_shows(ours + lacking, unpruned_test=0.9)[0]  # 70% none: a peer lacks a seed


def test_length_check_command_reads_two_baseline_summaries(tmp_path: Path) -> None:
    import json
    import subprocess

    for name, iters, dev in (("short", 100, 0.9), ("long", 200, 0.91)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"seed": 0, "iters": iters, "dev_top1": dev}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fair_verdict.py"
    proc = subprocess.run([sys.executable, str(script), "--length", str(tmp_path / "short.json"),
                           str(tmp_path / "long.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(100 vs 200 iterations, seed 0)" in proc.stdout and "+1.00 points" in proc.stdout
    assert "NOT converged" in proc.stdout


def test_rows_that_prune_with_torch_pruning_but_fine_tune_our_way_are_reported_apart() -> None:
    ours = _grid("default", lambda s, f, b: 0.90)
    own = _grid("tp magnitude uniform", lambda s, f, b: 0.85)
    hybrid = [c for c in _grid("tp magnitude uniform, our fine-tuning", lambda s, f, b: 0.90) if c["budget"] != "none"]
    text = "\n".join(must_shows(ours + own + hybrid, unpruned_test=0.9))
    assert "70% short: default beats Torch-Pruning's own recipes by more than the spread" in text
    assert "70% short: default level with every row Torch-Pruning pruned within the spread" in text
    assert "70% none: default beats every row Torch-Pruning pruned" in text  # the hybrid has no none cells
    assert "incomplete" not in text
    assert "every row Torch-Pruning pruned" not in "\n".join(must_shows(ours + own, unpruned_test=0.9))
