"""The fair fight's registered rules (docs/results/fair-jobs.txt and issues 26 and 28), applied to stored cells.

Every rule here was fixed before the cells it reads ran; this module only applies it, so a verdict in the
README is a line that ``fair_fight.py --merge ...`` prints, not a reading by hand. Top-1 is a fraction
(0.003 is 0.3 points). A rule compares two rows over the seeds both hold, and says "incomplete" when a row
lacks a seed the other has: nothing is concluded from part of a grid.

The seed spread (registered 2026-12-08 04:00 UTC, before any cell on a 40-epoch baseline) is the larger of
the two rows' sample standard deviations over seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

POINT = 0.01  # one point of top-1
LENGTH_GAIN = 0.3 * POINT  # the length ladder: doubling the training must gain less than this on dev
RECON_SLACK = 0.1 * POINT  # step 7: reconstruction may trail the default by this much where fine-tuning follows
UNPRUNED_GAP = 0.3 * POINT  # issue 28: 50% removed, long budget, within this of the unpruned network
DEFAULT, RECON = "default", "default reconstruct"
DECIDING = (0.7, 0.85)
# Torch-Pruning's own recipes (issue 26, item 2): its pruner and importance, its benchmark's fine-tuning. The other
# "tp ..." rows prune with Torch-Pruning but fine-tune our way or restart (step 4's schedule): the must-shows are
# also printed against every row Torch-Pruning pruned, for information, so a lead that is only the fine-tuning shows.
TP_OWN = ("tp magnitude uniform", "tp magnitude global", "tp taylor", "tp group-sl")


def _values(cells: Iterable[dict], recipe: str, fraction: float, budget: str, key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in cells
            if r["recipe"] == recipe and r["budget"] == budget and abs(r["target"] - fraction) < 1e-9}


def paired(cells: list[dict], a: str, b: str, fraction: float, budget: str, key: str = "top1"
           ) -> tuple[list[float], list[float]] | None:
    """Both rows' values over the same seeds, or None when either lacks a seed the other holds (or both are empty)."""
    va, vb = _values(cells, a, fraction, budget, key), _values(cells, b, fraction, budget, key)
    if not va or va.keys() != vb.keys():
        return None
    seeds = sorted(va)
    return [va[s] for s in seeds], [vb[s] for s in seeds]


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def spread(a: list[float], b: list[float]) -> float:
    return max(_std(a), _std(b))


def length_check(shorter: dict, longer: dict) -> str:
    """The length ladder (amendments of 15:40 and 22:32 UTC, 2026-12-07): the shorter baseline counts as converged
    only if training twice as long ends less than 0.3 development points higher."""
    gain = longer["dev_top1"] - shorter["dev_top1"]
    epochs = (shorter["iters"], longer["iters"])
    verdict = "converged" if gain < LENGTH_GAIN else "NOT converged: the grid moves to the longer baselines"
    return (f"Length check ({epochs[0]} vs {epochs[1]} iterations, seed {shorter['seed']}): development top-1 "
            f"{shorter['dev_top1']:.4f} -> {longer['dev_top1']:.4f} ({gain / POINT:+.2f} points): "
            f"the shorter is {verdict}")


def reconstruct_rule(cells: list[dict], fractions: Iterable[float] = (0.5, 0.7, 0.85)) -> str:
    """Step 7 (amendment of 23:50 UTC, 2026-12-07), on the development split, means over seeds: reconstruction
    becomes the default if it is at most 0.1 points below the default at every fraction and budget above zero
    and above it with no fine-tuning at every fraction; if it leads only there, it becomes the README's advice
    for little or no fine-tuning."""
    level, leads_none = True, True
    for fraction in fractions:
        for budget in ("none", "short", "long"):
            pair = paired(cells, RECON, DEFAULT, fraction, budget, "dev_top1")
            if pair is None:
                return f"Step 7 rule: incomplete ({fraction:.0%} {budget} lacks a seed in one of the two rows)"
            diff = statistics.fmean(pair[0]) - statistics.fmean(pair[1])
            if budget == "none":
                leads_none &= diff > 0
            else:
                level &= diff >= -RECON_SLACK
    outcome = ("reconstruction becomes the default" if level and leads_none else
               "reconstruction becomes the advice for little or no fine-tuning, not the default" if leads_none else
               "no change")
    return f"Step 7 rule (development split): {outcome}"


def must_shows(cells: list[dict], unpruned_test: float, ours: str = DEFAULT) -> list[str]:
    """Issues 26 and 28's must-shows for the row ``ours``, on the test split (the reported one)."""
    lines = []
    pruned_by_tp = sorted({r["recipe"] for r in cells if r["recipe"].startswith("tp ")})
    for peers, whom in ((TP_OWN, "Torch-Pruning's own recipes"), (pruned_by_tp, "every row Torch-Pruning pruned")):
        if whom.startswith("every") and set(pruned_by_tp) <= set(TP_OWN):
            continue  # the same rows as above
        for budget in ("none", "short", "long"):
            for fraction in DECIDING:
                lines.append(_against_peers(cells, ours, peers, fraction, budget, whom))
    half = _values(cells, ours, 0.5, "long", "top1")
    if not half:
        lines.append(f"50% long within 0.3 points of the unpruned network: incomplete (no {ours} cells)")
    else:
        gap = unpruned_test - statistics.fmean(half.values())
        lines.append(f"50% long within 0.3 points of the unpruned network ({unpruned_test:.4f}): "
                     f"{'yes' if gap <= UNPRUNED_GAP else 'NO'}, {gap / POINT:.2f} points below")
    lines.append(_best_without_finetuning(cells, ours))
    return lines


def _against_peers(cells: list[dict], ours: str, peers: Iterable[str], fraction: float, budget: str,
                   whom: str) -> str:
    """Level with every row of ``peers`` within the spread (issue 26); ahead by more than it (issue 28). A peer
    with no cell at this fraction and budget (step 4's rows have no none budget) is not a competitor there."""
    where = f"{fraction:.0%} {budget}"
    worst = None  # the smallest margin over the spread
    for peer in peers:
        if not _values(cells, peer, fraction, budget, "top1"):
            continue
        pair = paired(cells, ours, peer, fraction, budget)
        if pair is None:
            return f"{where}: incomplete ({ours} or {peer} lacks a seed)"
        margin = statistics.fmean(pair[0]) - statistics.fmean(pair[1])
        if worst is None or margin - spread(*pair) < worst[0] - worst[1]:
            worst = (margin, spread(*pair), peer)
    if worst is None:
        return f"{where}: none of {whom} has a cell"
    margin, sp, peer = worst
    status = f"beats {whom} by more than the spread" if margin > sp else (
        f"level with {whom} within the spread, not ahead by more" if margin >= -sp
        else f"BEHIND one of {whom} by more than the spread")
    return f"{where}: {ours} {status} (closest: {peer}, {margin / POINT:+.2f} points, spread {sp / POINT:.2f})"


def _best_without_finetuning(cells: list[dict], ours: str) -> str:
    """Issue 28: with no fine-tuning, ours is the best row (highest mean test top-1) at every fraction."""
    fractions = sorted({r["target"] for r in cells if r["recipe"] == ours and r["budget"] == "none"})
    if not fractions:
        return f"No fine-tuning, {ours} the best row: incomplete (no {ours} cells)"
    losses = []
    for fraction in fractions:
        rows = {r["recipe"] for r in cells if r["budget"] == "none" and abs(r["target"] - fraction) < 1e-9}
        pairs = {label: paired(cells, ours, label, fraction, "none") for label in rows - {ours}}
        if any(p is None for p in pairs.values()):
            return f"No fine-tuning, {ours} the best row: incomplete at {fraction:.0%} (a row lacks a seed)"
        mine = statistics.fmean(_values(cells, ours, fraction, "none", "top1").values())
        better = {label: statistics.fmean(p[1]) for label, p in pairs.items() if statistics.fmean(p[1]) >= mine}
        losses += [f"{fraction:.0%}: {label} {mean:.4f} against {mine:.4f}" for label, mean in better.items()]
    return f"No fine-tuning, {ours} the best row: " + ("yes at " + ", ".join(f"{f:.0%}" for f in fractions)
                                                          if not losses else "NO (" + "; ".join(losses) + ")")


def verdicts(cells: list[dict], unpruned_test: float) -> str:
    """Every rule and must-show the stored cells can speak to, as the Markdown list under the table."""
    lines = [reconstruct_rule(cells)] if any(r["recipe"] == RECON for r in cells) else []
    lines += must_shows(cells, unpruned_test)
    if "becomes the default" in lines[0]:  # the rule's new default answers the must-shows too
        lines += must_shows(cells, unpruned_test, RECON)
    return "Registered rules and must-shows, test split unless said (benchmarks/fair_verdict.py):\n" + "\n".join(
        f"- {line}" for line in lines)


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description="the length ladder's check, from two baselines' summaries")
    parser.add_argument("--length", nargs=2, type=Path, metavar=("SHORTER", "LONGER"), required=True,
                        help="baseline-v2-seedN.json of the shorter and of the twice-as-long training")
    args = parser.parse_args()
    shorter, longer = (json.loads(p.read_text()) for p in args.length)
    print(length_check(shorter, longer))


if __name__ == "__main__":
    main()
