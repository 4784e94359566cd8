"""The fair fight's registered rules (docs/results/fair-jobs.txt and issues 26 and 28), applied to stored cells.

Every rule here was fixed before the cells it reads ran; this module only applies it, so a verdict in the
README is a line that ``fair_fight.py --merge ...`` prints, not a reading by hand. Top-1 is a fraction
(0.003 is 0.3 points), compared with the thresholds in points rounded to 6 places (0.9325 - 0.9295 is 0.3).
A rule reads every seed of the store's baselines and says "incomplete" where a row lacks one, and the list
says PROVISIONAL unless the cells are the registered grid's (its baselines' length and seeds 0-2): nothing
binding is concluded from part of a grid.

The seed spread (registered 2026-12-08 04:05 UTC, before any cell on a 40-epoch baseline) is the larger of
the two rows' sample standard deviations over seeds; with one seed there is none, and no margin is weighed.
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
GRID_SEEDS, GRID_ITERS = (0, 1, 2), 40 * 390  # the registered grid (amendment of 22:32 UTC): 40-epoch baselines
# Torch-Pruning's own recipes (issue 26, item 2): its pruner and importance, its benchmark's fine-tuning. The other
# "tp ..." rows prune with Torch-Pruning but fine-tune our way or restart (step 4's schedule): the must-shows are
# also printed against every row Torch-Pruning pruned, for information, so a lead that is only the fine-tuning shows.
TP_OWN = ("tp magnitude uniform", "tp magnitude global", "tp taylor", "tp group-sl")


def _points(x: float) -> float:
    return round(x / POINT, 6)


def _values(cells: Iterable[dict], recipe: str, fraction: float, budget: str, key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in cells
            if r["recipe"] == recipe and r["budget"] == budget and abs(r["target"] - fraction) < 1e-9}


def paired(cells: list[dict], a: str, b: str, fraction: float, budget: str, seeds: list[int], key: str = "top1"
           ) -> tuple[list[float], list[float]] | None:
    """Both rows' values over ``seeds``, or None when either lacks one of them."""
    va, vb = _values(cells, a, fraction, budget, key), _values(cells, b, fraction, budget, key)
    if not set(seeds) <= va.keys() & vb.keys():
        return None
    return [va[s] for s in seeds], [vb[s] for s in seeds]


def spread(a: list[float], b: list[float]) -> float:
    return max(statistics.stdev(a), statistics.stdev(b)) if len(a) > 1 else 0.0


def length_check(shorter: dict, longer: dict) -> str:
    """The length ladder (amendments of 15:40 and 22:32 UTC, 2026-12-07): the shorter baseline counts as converged
    only if training twice as long ends less than 0.3 development points higher."""
    gain = longer["dev_top1"] - shorter["dev_top1"]
    epochs = (shorter["iters"], longer["iters"])
    verdict = "converged" if _points(gain) < _points(LENGTH_GAIN) else (
        "NOT converged: the grid moves to the longer baselines")
    return (f"Length check ({epochs[0]} vs {epochs[1]} iterations, seed {shorter['seed']}): development top-1 "
            f"{shorter['dev_top1']:.4f} -> {longer['dev_top1']:.4f} ({gain / POINT:+.2f} points): "
            f"the shorter is {verdict}")


def reconstruct_rule(cells: list[dict], seeds: list[int], fractions: Iterable[float] = (0.5, 0.7, 0.85)) -> str:
    """Step 7 (amendment of 23:50 UTC, 2026-12-07), on the development split, means over seeds: reconstruction
    becomes the default if it is at most 0.1 points below the default at every fraction and budget above zero
    and above it with no fine-tuning at every fraction; if it leads only there, it becomes the README's advice
    for little or no fine-tuning."""
    level, leads_none = True, True
    for fraction in fractions:
        for budget in ("none", "short", "long"):
            pair = paired(cells, RECON, DEFAULT, fraction, budget, seeds, "dev_top1")
            if pair is None:
                return f"Step 7 rule: incomplete ({fraction:.0%} {budget} lacks one of seeds {seeds} in a row)"
            diff = _points(statistics.fmean(pair[0]) - statistics.fmean(pair[1]))
            if budget == "none":
                leads_none &= diff > 0
            else:
                level &= diff >= -_points(RECON_SLACK)
    outcome = ("reconstruction becomes the default" if level and leads_none else
               "reconstruction becomes the advice for little or no fine-tuning, not the default" if leads_none else
               "no change")
    return f"Step 7 rule (development split): {outcome}"


def must_shows(cells: list[dict], unpruned: dict[int, float], ours: str = DEFAULT) -> list[str]:
    """Issues 26 and 28's must-shows for the row ``ours``, on the test split (the reported one), over the seeds
    of ``unpruned`` (each seed's unpruned test top-1)."""
    seeds, lines = sorted(unpruned), []
    pruned_by_tp = sorted({r["recipe"] for r in cells if r["recipe"].startswith("tp ")})
    for peers, whom in ((TP_OWN, "Torch-Pruning's own recipes"), (pruned_by_tp, "every row Torch-Pruning pruned")):
        if whom.startswith("every") and set(pruned_by_tp) <= set(TP_OWN):
            continue  # the same rows as above
        for budget in ("none", "short", "long"):
            for fraction in DECIDING:
                lines.append(_against_peers(cells, ours, peers, (fraction, budget), seeds, whom))
    lines.append(_near_unpruned(cells, ours, unpruned))
    lines.append(_best_without_finetuning(cells, ours, seeds))
    return lines


def _against_peers(cells: list[dict], ours: str, peers: Iterable[str], where: tuple[float, str], seeds: list[int],
                   whom: str) -> str:
    """Level with every row of ``peers`` within the spread (issue 26); ahead of each by more than it (issue 28).
    Torch-Pruning's own recipes must all be there; the other rows it pruned only where they have cells (step
    4's have no none budget)."""
    text = f"{where[0]:.0%} {where[1]}"
    rows = []  # (peer, margin, spread)
    for peer in peers:
        if peer not in TP_OWN and not _values(cells, peer, *where, "top1"):
            continue
        pair = paired(cells, ours, peer, *where, seeds)
        if pair is None:
            return f"{text}: incomplete ({ours} or {peer} lacks one of seeds {seeds})"
        rows.append((peer, statistics.fmean(pair[0]) - statistics.fmean(pair[1]), spread(*pair)))
    if not rows:
        return f"{text}: none of {whom} has a cell"
    peer, margin, sp = min(rows, key=lambda r: r[1] - r[2])  # the closest, margin against its spread
    detail = f"closest: {peer}, {margin / POINT:+.2f} points, spread {sp / POINT:.2f}"
    behind = [r for r in rows if _points(r[1]) < -_points(r[2])]
    if len(seeds) < 2:
        return f"{text}: one seed, no spread to weigh the margins against ({detail})"
    if behind:
        peer, margin, sp = behind[0]
        return (f"{text}: {ours} BEHIND {peer} ({whom}) by more than the spread ({margin / POINT:+.2f} points, "
                f"spread {sp / POINT:.2f})")
    status = (f"beats {whom} by more than the spread" if all(_points(m) > _points(s) for _, m, s in rows)
              else f"level with {whom} within the spread, not ahead of each by more")
    return f"{text}: {ours} {status} ({detail})"


def _near_unpruned(cells: list[dict], ours: str, unpruned: dict[int, float]) -> str:
    """Issue 28: with 50% of MACs removed and the long budget, within 0.3 points of the unpruned network."""
    half = _values(cells, ours, 0.5, "long", "top1")
    if not set(unpruned) <= half.keys():
        return f"50% long within 0.3 points of the unpruned network: incomplete ({ours} lacks one of seeds {sorted(unpruned)})"
    base = statistics.fmean(unpruned.values())
    gap = base - statistics.fmean(half[s] for s in unpruned)
    return (f"50% long within 0.3 points of the unpruned network ({base:.4f}): "
            f"{'yes' if _points(gap) <= _points(UNPRUNED_GAP) else 'NO'}, {gap / POINT:.2f} points below")


def _best_without_finetuning(cells: list[dict], ours: str, seeds: list[int]) -> str:
    """Issue 28: with no fine-tuning, ours is the best row (highest mean test top-1) at every fraction."""
    fractions = sorted({r["target"] for r in cells if r["recipe"] == ours and r["budget"] == "none"})
    if not fractions:
        return f"No fine-tuning, {ours} the best row: incomplete (no {ours} cells)"
    losses = []
    for fraction in fractions:
        rows = {r["recipe"] for r in cells if r["budget"] == "none" and abs(r["target"] - fraction) < 1e-9}
        pairs = [paired(cells, ours, label, fraction, "none", seeds) for label in sorted(rows)]  # ours paired too
        if None in pairs:
            return f"No fine-tuning, {ours} the best row: incomplete at {fraction:.0%} (a row lacks a seed)"
        mine = statistics.fmean(pairs[0][0])
        losses += [f"{fraction:.0%}: {label} {mean:.4f} against {mine:.4f}" for label, pair in zip(sorted(rows), pairs)
                   if label != ours and (mean := statistics.fmean(pair[1])) >= mine]
    return f"No fine-tuning, {ours} the best row: " + ("yes at " + ", ".join(f"{f:.0%}" for f in fractions)
                                                          if not losses else "NO (" + "; ".join(losses) + ")")


def verdicts(cells: list[dict], baselines: dict[str, dict]) -> str:
    """Every rule and must-show the stored cells can speak to, as the Markdown list under the table.
    ``baselines``: the store's, seed (a string, as JSON keeps it) -> its summary."""
    unpruned = {int(s): b["test_top1"] for s, b in baselines.items()}
    seeds, lengths = sorted(unpruned), sorted({b["iters"] for b in baselines.values()})
    lines = [reconstruct_rule(cells, seeds)] if any(r["recipe"] == RECON for r in cells) else []
    lines += must_shows(cells, unpruned)
    if lines[0].endswith("becomes the default"):  # the rule's new default answers the must-shows too
        lines += must_shows(cells, unpruned, RECON)
    binding = tuple(seeds) == GRID_SEEDS and lengths == [GRID_ITERS]
    note = "" if binding else (f"; PROVISIONAL: the rules bind on the registered grid ({GRID_ITERS}-iteration "
                               f"baselines, seeds 0-2), these cells are on {lengths} iterations, seeds {seeds}")
    return (f"Registered rules and must-shows, test split unless said (benchmarks/fair_verdict.py){note}:\n"
            + "\n".join(f"- {line}" for line in lines))


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
