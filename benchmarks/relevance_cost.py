"""Cost of relevance estimation versus the forward+backward passes it needs.

For ResNet-18 at 32x32 (batch 64, S = 8) this times SInGE ``group`` and ``channel`` relevance and
Taylor, then times the same number of plain forward+backward passes of the same sizes, twice: with the
weights frozen (gradient with respect to the input only: the passes the method cannot avoid) and
training-style (weight gradients too). The first ratio is the overhead of the method's own machinery
(gates, bookkeeping) beyond the passes it needs; target <= 1.15x.

The channel path needs K x S passes of the batch per group (thousands for ResNet-18), so it is timed
on a fixed share of its (channel, point) pairs; its ratio is per pass, like the others.

``--prefix-reuse``: instead, time the channel and group paths with and without prefix reuse (the
network before a group's first consumer run once per sample instead of once per row) on the same
data and S, and check that the relevance is the same (target: <= 0.5x the time, equal to 1e-6).

    uv run python benchmarks/relevance_cost.py            # full
    uv run python benchmarks/relevance_cost.py --smoke    # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from singe_dist.models import build_model
from singe_dist.relevance.criteria import CriterionConfig, accumulate
from singe_dist.relevance.groups import example_input, find_groups
from singe_dist.report import format_table


def _plain_passes(model: torch.nn.Module, rows: list[int], size: int, num_classes: int, weights: bool) -> float:
    """Seconds for plain forward+backward passes with these batch sizes (eval-mode BN, like relevance).

    ``weights=True``: a training-style backward (weight gradients). ``weights=False``: weights frozen,
    gradient with respect to the input only, the least any gradient-based criterion must compute.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(weights)
    start = time.perf_counter()
    for n in rows:
        x = torch.randn(n, 3, size, size, requires_grad=not weights)
        y = torch.randint(0, num_classes, (n,))
        loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
    elapsed = time.perf_counter() - start
    for p in model.parameters():
        p.requires_grad_(True)
    return elapsed


def _plain_forwards(model: torch.nn.Module, rows: list[int], size: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for n in rows:
            model(torch.randn(n, 3, size, size))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--channel-share", type=int, default=64, help="time 1/N of the channel path's pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="best of N timings")
    parser.add_argument("--prefix-reuse", action="store_true", help="compare with and without prefix reuse")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.size, args.batch, args.steps, args.channel_share, args.repeat = "digits_resnet", 16, 8, 2, 8, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num_classes = 10
    if args.prefix_reuse:
        prefix_reuse(args, num_classes)
        return
    model = build_model(args.model, num_classes).eval()
    groups = find_groups(model, example_input(model, (3, args.size, args.size)))
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, num_classes, (args.batch,))
    n, s = args.batch, args.steps
    rows_per_pass = n * s

    cases = {
        "singe group": (CriterionConfig(name="singe", path="group", steps=s, max_rows=rows_per_pass), (0, 1),
                        [n * s] * len(groups)),
        "taylor": (CriterionConfig(name="taylor", max_rows=rows_per_pass), (0, 1), [n]),
    }
    share = args.channel_share
    channel_rows = []
    for g in groups:
        pairs = len(range(0, g.size * s, share))
        total = n * pairs
        channel_rows += [rows_per_pass] * (total // rows_per_pass) + ([total % rows_per_pass] if total % rows_per_pass else [])
    cases[f"singe channel (1/{share} of pairs)"] = (
        CriterionConfig(name="singe", path="channel", steps=s, max_rows=rows_per_pass), (0, share), channel_rows)

    table = []
    for name, (config, channel_share, rows) in cases.items():
        method = min(_timed(lambda: accumulate(model, groups, [(x, y)], config, channel_share=channel_share))
                     for _ in range(args.repeat))
        # accumulate also evaluates the plain loss of each batch once (one forward): part of the method
        forward = min(_plain_forwards(model, [n], args.size) for _ in range(args.repeat))
        train = forward + min(_plain_passes(model, rows, args.size, num_classes, True) for _ in range(args.repeat))
        frozen = forward + min(_plain_passes(model, rows, args.size, num_classes, False) for _ in range(args.repeat))
        table.append([name, len(rows), sum(rows), f"{method:.3f}", f"{frozen:.3f}", f"{method / frozen:.2f}x",
                      f"{train:.3f}", f"{method / train:.2f}x"])
    print(f"model={args.model} input={args.size}x{args.size} batch={n} S={s} groups={len(groups)} "
          f"channels={sum(g.size for g in groups)} threads={args.threads} "
          f"cpu={platform.processor() or platform.machine()} torch={torch.__version__}")
    print(format_table(["criterion", "passes", "rows", "method s", "frozen-weight passes s", "ratio",
                        "training passes s", "ratio"], table))


def prefix_reuse(args: argparse.Namespace, num_classes: int) -> None:
    """Relevance time with and without prefix reuse, same model, data and S; and the largest score difference."""
    model = build_model(args.model, num_classes).eval()
    groups = find_groups(model, example_input(model, (3, args.size, args.size)))
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, num_classes, (args.batch,))
    rows = []
    for path, share in (("group", (0, 1)), ("channel", (0, args.channel_share))):
        timed, scores = {}, {}
        for reuse in (False, True):
            config = CriterionConfig(name="singe", path=path, steps=args.steps, prefix_reuse=reuse)
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                sums = accumulate(model, groups, [(x, y)], config, channel_share=share)
                best = min(best, time.perf_counter() - start)
            timed[reuse], scores[reuse] = best, sums.sums  # a share of the pairs: compare the sums it filled
        diff = max(float((scores[True][g] - scores[False][g]).abs().max() / scores[False][g].abs().max().clamp_min(1e-30))
                   for g in scores[True])
        label = path if share[1] == 1 else f"{path} (1/{share[1]} of pairs)"
        rows.append([label, f"{timed[False]:.2f}", f"{timed[True]:.2f}", f"{timed[True] / timed[False]:.2f}x",
                     f"{diff:.1e}"])
    print(f"model={args.model} input={args.size}x{args.size} batch={args.batch} S={args.steps} groups={len(groups)} "
          f"channels={sum(g.size for g in groups)} threads={args.threads} "
          f"cpu={platform.processor() or platform.machine()} torch={torch.__version__}")
    print(format_table(["path", "without reuse s", "with reuse s", "ratio", "max relative score difference"], rows))


def _timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
