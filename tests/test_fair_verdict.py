"""The fair fight's registered rules (benchmarks/fair_verdict.py) on hand-built cells: each rule's edge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from fair_verdict import length_check, must_shows, reconstruct_rule, verdicts  # noqa: E402

FRACTIONS, BUDGETS = (0.5, 0.7, 0.85), ("none", "short", "long")
TWO = {0: 0.93, 1: 0.93}  # two seeds' unpruned test top-1


def _cell(recipe: str, seed: int, fraction: float, budget: str, top1: float) -> dict:
    return {"recipe": recipe, "seed": seed, "target": fraction, "budget": budget, "top1": top1, "dev_top1": top1}


def _grid(recipe: str, value, seeds=(0, 1)) -> list[dict]:  # noqa: ANN001 (value: (seed, fraction, budget) -> top-1)
    return [_cell(recipe, s, f, b, value(s, f, b)) for s in seeds for f in FRACTIONS for b in BUDGETS]


def _text(lines: list[str]) -> str:
    return "\n".join(lines)


@pytest.mark.parametrize(("gain", "converged"), [(0.0029, True), (0.003, False), (0.0031, False)])
def test_length_check_counts_the_shorter_converged_only_under_0_3_points(gain: float, converged: bool) -> None:
    shorter = {"seed": 0, "iters": 100, "dev_top1": 0.9327}
    line = length_check(shorter, {"seed": 0, "iters": 200, "dev_top1": 0.9327 + gain})
    assert ("NOT converged" not in line) is converged and f"{gain * 100:+.2f} points" in line


@pytest.mark.parametrize(("short_long_diff", "none_diff", "outcome"), [
    (-0.001, 0.2, "becomes the default"),  # exactly 0.1 points below is still level
    (-0.0011, 0.2, "becomes the advice for little or no fine-tuning"),
    (0.01, -0.001, "no change"),
])
def test_reconstruction_rule(short_long_diff: float, none_diff: float, outcome: str) -> None:
    default = _grid("default", lambda s, f, b: 0.9 - 0.001 * s)
    recon = _grid("default reconstruct",
                  lambda s, f, b: 0.9 - 0.001 * s + (none_diff if b == "none" else short_long_diff))
    assert outcome in reconstruct_rule(default + recon, [0, 1])


def test_reconstruction_rule_waits_for_every_seed_of_the_baselines() -> None:
    default = _grid("default", lambda s, f, b: 0.9, seeds=(0, 1, 2))
    recon = _grid("default reconstruct", lambda s, f, b: 0.95, seeds=(0, 1))
    assert "incomplete" in reconstruct_rule(default + recon, [0, 1, 2])
    assert "becomes the default" in reconstruct_rule(default + recon, [0, 1])


def test_must_shows_weigh_the_margin_against_the_seed_spread() -> None:
    # ours leads the peer by 1 point at 70%, by 0.1 at 85%; the seeds differ by 0.4 points (spread 0.28)
    ours = _grid("default", lambda s, f, b: 0.5 if b == "none" else {0.5: 0.93, 0.7: 0.91, 0.85: 0.881}[f] - 0.004 * s)
    peers = [c for label in ("tp magnitude uniform", "tp magnitude global", "tp taylor", "tp group-sl")
             for c in _grid(label, lambda s, f, b: 0.4 if b == "none" else {0.5: 0.92, 0.7: 0.90, 0.85: 0.88}[f])]
    text = _text(must_shows(ours + peers, {0: 0.9325, 1: 0.9295}))
    assert "70% long: default beats Torch-Pruning's own recipes by more than the spread" in text
    assert "85% long: default level with Torch-Pruning's own recipes within the spread" in text
    assert "within 0.3 points of the unpruned network (0.9310): yes, 0.30 points below" in text  # 0.931 - 0.928
    assert "No fine-tuning, default the best row: yes at 50%, 70%, 85%" in text
    assert "incomplete" in _text(must_shows(ours + peers[1:], TWO))  # a Torch-Pruning recipe lacks a cell


def test_a_precise_peer_ahead_is_not_hidden_by_a_noisy_one() -> None:
    ours = _grid("default", lambda s, f, b: 0.90)
    noisy = _grid("tp taylor", lambda s, f, b: 0.90 + (0.03 if s else -0.03))  # level, spread 4.2 points
    ahead = _grid("tp magnitude uniform", lambda s, f, b: 0.91 + 0.005 * s)  # 1.25 points ahead, spread 0.35
    rest = [c for label in ("tp magnitude global", "tp group-sl") for c in _grid(label, lambda s, f, b: 0.5)]
    assert "70% long: default BEHIND tp magnitude uniform" in _text(must_shows(ours + noisy + ahead + rest, TWO))


def test_one_seed_weighs_no_margin() -> None:
    cells = [c for label in ("default", "tp magnitude uniform", "tp magnitude global", "tp taylor", "tp group-sl")
             for c in _grid(label, lambda s, f, b, label=label: 0.9 if label == "default" else 0.8, seeds=(0,))]
    text = _text(must_shows(cells, {0: 0.93}))
    assert "70% long: one seed, no spread to weigh the margins against" in text and "beats" not in text


def test_rows_that_prune_with_torch_pruning_but_fine_tune_our_way_are_reported_apart() -> None:
    ours = _grid("default", lambda s, f, b: 0.90)
    own = [c for label in ("tp magnitude uniform", "tp magnitude global", "tp taylor", "tp group-sl")
           for c in _grid(label, lambda s, f, b: 0.85)]
    hybrid = [c for c in _grid("tp magnitude uniform, our fine-tuning", lambda s, f, b: 0.90) if c["budget"] != "none"]
    text = _text(must_shows(ours + own + hybrid, TWO))
    assert "70% short: default beats Torch-Pruning's own recipes by more than the spread" in text
    assert "70% short: default level with every row Torch-Pruning pruned within the spread" in text
    assert "70% none: default beats every row Torch-Pruning pruned" in text  # the hybrid has no none cells
    assert "incomplete" not in text
    assert "every row Torch-Pruning pruned" not in _text(must_shows(ours + own, TWO))


def test_verdicts_bind_only_on_the_registered_grid_and_follow_a_new_default() -> None:
    ours = _grid("default", lambda s, f, b: 0.3 if b == "none" else 0.9, seeds=(0, 1, 2))
    recon = _grid("default reconstruct", lambda s, f, b: 0.8 if b == "none" else 0.9, seeds=(0, 1, 2))
    grid = {str(s): {"test_top1": 0.93, "iters": 15600} for s in (0, 1, 2)}
    text = verdicts(ours + recon, grid)
    assert "PROVISIONAL" not in text and "- Step 7 rule (development split): reconstruction becomes the default" in text
    assert "No fine-tuning, default reconstruct the best row: yes" in text  # the new default's must-shows follow
    shorter = {s: {**b, "iters": 7800} for s, b in grid.items()}
    assert "PROVISIONAL" in verdicts(ours + recon, shorter)


def test_length_check_command_reads_two_baseline_summaries(tmp_path: Path) -> None:
    for name, iters, dev in (("short", 100, 0.9), ("long", 200, 0.91)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"seed": 0, "iters": iters, "dev_top1": dev}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fair_verdict.py"
    proc = subprocess.run([sys.executable, str(script), "--length", str(tmp_path / "short.json"),
                           str(tmp_path / "long.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(100 vs 200 iterations, seed 0)" in proc.stdout and "+1.00 points" in proc.stdout
    assert "NOT converged" in proc.stdout
