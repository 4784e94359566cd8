"""Does the width search's score predict the fine-tuned top-1? (issue 28, item 2)

``prune.allocation: search`` (singe_dist/engine/search.py) picks, at each step, the width candidate whose
pruned copy, BatchNorm re-estimated, scores best on held-out calibration batches. That is worth its cost
only if the score ranks candidates the way fine-tuning later does. This measures it, protocol fixed
before its first cell (registered in docs/results/search-proxy-jobs.txt):

- **Network and data**: the fair fight's (benchmarks/fair_fight.py): Fashion-MNIST shards, the seed-0
  ``cifar_resnet20`` baseline of ``--baselines``; fine-tuned top-1 read on the development split
  (10,000 images never trained on), so nothing here touches the test split.
- **Candidates**: one step to ``--fraction`` of the MACs removed, ``--candidates`` width vectors from
  :func:`~singe_dist.plan.select.candidate_weights` (uniform first, then group weights U[0.5, 1.5]),
  drawn with the experiment's seed; inside each group the default criterion (magnitude L2) chooses.
- **Scores**, all on the seed's calibration stream (training images, un-augmented), after BatchNorm is
  re-estimated on its first 2 batches (256 images), as the job does: minus the loss and the top-1 on the
  next 256, 1,024 and 4,096 images; and the same on 1,024 after a short fine-tune of ``--pre-iters``
  iterations (our fine-tuning, below).
- **Fine-tuned top-1**: every candidate is fine-tuned alike, ``--iters`` iterations of our default
  recipe's fine-tuning in one phase (SGD Nesterov, cosine from 0.02, weight decay 1e-4, distillation 0.5
  from the unpruned network), on the same training stream and torch seed, then read on the dev split.
- **Reading**: per seed, the Spearman correlation of each score with the fine-tuned top-1, and what the
  search would have won: the fine-tuned top-1 of its winner minus uniform's.

    uv run python benchmarks/search_proxy.py --work runs/bench/fair --baselines runs/bench/fair/baselines-20ep \
        --baseline-epochs 20 --seeds 0 1 --out docs/results/search-proxy
    uv run python benchmarks/search_proxy.py --smoke --work /tmp/proxy     # seconds, digits (test suite)

Resumable: every finished candidate is stored (``OUT.json``) and skipped on a rerun. Torch threads are
pinned to 1 (``--threads``): torch's default of 2 is several times slower on the 2-core machine.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fair_fight import BASELINE_EPOCHS, EPOCH, OUR_FINETUNE, _device, train_converged  # noqa: E402
from quality import job_config, prepare_data  # noqa: E402

SCORE_IMAGES = (256, 1024, 4096)  # held-out images a candidate is scored on (the first also re-estimates BN)
PRE_IMAGES = 1024  # ... after the short fine-tune


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        out = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    ra, rb = ranks(a), ranks(b)
    if len(set(ra)) < 2 or len(set(rb)) < 2:
        return float("nan")
    return statistics.correlation(ra, rb)


def _finetune(model: torch.nn.Module, teacher: torch.nn.Module, streams, iters: int, seed: int) -> None:  # noqa: ANN001
    from singe_dist.engine.lr import LrSchedule
    from singe_dist.engine.rng import seed_phase
    from singe_dist.engine.train import make_optimizer, train_steps

    ft = OUR_FINETUNE
    optimizer = make_optimizer(model, ft.lr, weight_decay=ft.weight_decay)
    seed_phase(seed, 0, 0)
    train_steps(model, optimizer, streams.train(0), iters, LrSchedule(ft.lr, iters, ft.shape),
                teacher=teacher, distill_weight=ft.distill, temperature=4.0)


def _scores(model: torch.nn.Module, held_out: list, counts: tuple[int, ...], batch: int) -> dict:
    from singe_dist.engine.train import eval_sums, result_from_sums

    out = {}
    for n in counts:
        result = result_from_sums(eval_sums(model, held_out[: n // batch]))
        out[f"loss_{n}"], out[f"top1_{n}"] = -result.loss, result.top1
    return out


def run_candidate(args: argparse.Namespace, data: dict[str, str], seed: int, index: int, weights: dict[str, float],
                  path: Path) -> dict:
    """One candidate: pruned, BatchNorm re-estimated, scored, (briefly fine-tuned and scored), fine-tuned, read."""
    from singe_dist.checkpoint import load_model
    from singe_dist.data.streams import DataStreams
    from singe_dist.engine.search import prune_candidate, score_candidate
    from singe_dist.engine.train import evaluate
    from singe_dist.plan.cost import measure
    from singe_dist.relevance.criteria import score
    from singe_dist.relevance.groups import example_input, find_groups
    from singe_dist.relevance.registry import make_criterion

    t0 = time.perf_counter()
    device = _device(args)
    config = job_config(args, data, seed, args.work / "unused", [], val="dev")
    size = (3, config.data.image_size, config.data.image_size)
    streams = DataStreams(config.data, 10, seed=seed)
    batch, counts = config.data.batch_size, args.score_images
    calibration = streams.calibration(0, (counts[0] + max(counts)) // batch)
    bn, held_out = calibration[: counts[0] // batch], calibration[counts[0] // batch:]
    model = load_model(path)[0].to(device)
    original = measure(model, size).macs
    groups = find_groups(model, example_input(model, size), config.model.ignored_layers)
    scores = score(make_criterion(config.criterion), model, groups, bn)
    policy = dataclasses.replace(config.prune.policy({g.id: int(g.size) for g in groups}), allocation="uniform",
                                 group_weights=weights)
    target = original * (1 - args.fraction)
    job_score = score_candidate(model, groups, scores, size, target, policy, (bn, held_out[: counts[0] // batch]),
                                "loss")  # the job's own scorer, as a check on the scores below
    pruned = prune_candidate(model, groups, scores, size, target, policy, bn)
    row = {"seed": seed, "candidate": index, "weights": weights, "removed": 1 - measure(pruned, size).macs / original,
           **_scores(pruned, held_out, counts, batch)}
    if abs(row[f"loss_{counts[0]}"] - job_score) > 1e-4:
        raise SystemExit(f"search_proxy.py: candidate {index} scores {row[f'loss_{counts[0]}']:.6f} here but "
                         f"{job_score:.6f} in engine/search.py: the copy is not the job's scorer")
    teacher = load_model(path)[0].to(device)
    if args.pre_iters:
        brief = copy.deepcopy(pruned)
        _finetune(brief, teacher, streams, args.pre_iters, seed)
        row.update({f"pre_{k}": v for k, v in _scores(brief, held_out, (args.pre_images,), batch).items()})
    _finetune(pruned, teacher, streams, args.iters, seed)
    row["dev_top1"] = evaluate(pruned, DataStreams(config.data, 10, seed=seed, training=False).val()).top1
    row["seconds"] = time.perf_counter() - t0
    return row


def summarise(rows: list[dict]) -> str:
    """Per seed: each score's Spearman correlation with the fine-tuned top-1, and what its winner gained."""
    keys = [k for k in rows[0] if k.startswith(("loss_", "top1_", "pre_"))]  # pre_*: not a scorer the job has
    lines = ["| seed | candidates | fine-tuned dev top-1: min / uniform / max | score | Spearman | "
             "winner's top-1 minus uniform's |", "|---|---|---|---|---|---|"]
    for seed in sorted({r["seed"] for r in rows}):
        mine = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["candidate"])
        tops = [r["dev_top1"] for r in mine]
        uniform = next((r["dev_top1"] for r in mine if r["candidate"] == 0), float("nan"))
        for k in keys:
            winner = max(mine, key=lambda r: (r[k], -r["candidate"]))  # the search's tie-break: lowest index
            lines.append(f"| {seed} | {len(mine)} | {min(tops):.4f} / {uniform:.4f} / {max(tops):.4f} | {k} | "
                         f"{spearman([r[k] for r in mine], tops):+.2f} | {winner['dev_top1'] - uniform:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--baseline-seed", type=int, default=0, help="whose baseline every seed prunes")
    parser.add_argument("--candidates", type=int, help="width candidates a seed (default 12; --smoke 4)")
    parser.add_argument("--spread", type=float, default=0.5)
    parser.add_argument("--fraction", type=float, default=0.7, help="MACs removed, in one step")
    parser.add_argument("--iters", type=int, help="fine-tuning iterations (default: the fair fight's short, 2%%)")
    parser.add_argument("--pre-iters", type=int, help="the short fine-tune before scoring (default 25, --smoke 2; 0: none)")
    parser.add_argument("--baseline-epochs", type=int, default=BASELINE_EPOCHS)
    parser.add_argument("--epoch-iters", type=int, default=EPOCH)
    parser.add_argument("--baselines", type=Path, required=False)
    parser.add_argument("--work", type=Path, required=True, help="shards (the fair fight's folder)")
    parser.add_argument("--out", type=Path, help="OUT.json (every candidate, resumable) and OUT.md (the table)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the bundled digits (test suite)")
    args = parser.parse_args()
    args.dataset, args.source, args.size, args.batch_size = "fashion", "/usr/share/datasets/fashion-mnist", 16, 128
    args.path_points, args.calibration_batches = 4, 2
    if args.smoke:
        args.dataset, args.seeds = "digits", [0, 1]
        args.pre_iters = 2 if args.pre_iters is None else args.pre_iters
        args.candidates = args.candidates or 4
        args.baseline_epochs, args.epoch_iters, args.batch_size, args.iters = 2, 25, 32, 3
        args.calibration_batches, args.path_points, args.fraction = 1, 2, 0.5
        args.baselines = args.work
    args.score_images, args.pre_images = ((32, 64, 128), 64) if args.smoke else (SCORE_IMAGES, PRE_IMAGES)  # digits: 1,437
    args.candidates = args.candidates or 12
    args.pre_iters = 25 if args.pre_iters is None else args.pre_iters
    if args.baselines is None:
        parser.error("--baselines is needed (the folder of the fair fight's converged baselines)")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    args.train_iters = args.baseline_epochs * args.epoch_iters
    args.iters = args.iters if args.iters is not None else round(0.02 * args.train_iters)
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args)
    path, base = train_converged(args, data, args.baseline_seed)
    store_path = args.out.with_suffix(".json") if args.out else None
    settings = {"baseline_seed": args.baseline_seed, "baseline_test_top1": base["test_top1"], "fraction": args.fraction,
                "candidates": args.candidates, "spread": args.spread, "iters": args.iters, "pre_iters": args.pre_iters,
                "score_images": list(args.score_images), "pre_images": args.pre_images}
    rows = []
    if store_path and store_path.is_file():
        stored = json.loads(store_path.read_text())
        if stored["settings"] != settings:
            changed = sorted(k for k in settings if stored["settings"].get(k) != settings[k])
            raise SystemExit(f"search_proxy.py: {store_path} holds candidates of other settings ({', '.join(changed)}): "
                             "give these settings a store of their own")
        rows = stored["rows"]
    done = {(r["seed"], r["candidate"]) for r in rows}
    from singe_dist.atomic import atomic_write_text
    from singe_dist.checkpoint import load_model
    from singe_dist.plan.select import candidate_weights
    from singe_dist.relevance.groups import example_input, find_groups

    image = job_config(args, data, 0, args.work / "unused", []).data.image_size
    ids = [g.id for g in find_groups(load_model(path)[0], example_input(load_model(path)[0], (3, image, image)), [])]
    start = time.perf_counter()
    for seed in args.seeds:
        # drawn as the job draws step 1's (loop.py: run.seed * 1009 + step), with run.seed = the seed
        for i, weights in enumerate(candidate_weights(ids, args.candidates, args.spread, seed * 1009)):
            if (seed, i) in done:
                continue
            row = run_candidate(args, data, seed, i, weights, path)
            rows.append(row)
            if store_path:
                atomic_write_text(store_path, json.dumps({"baseline": base, "settings": settings, "rows": rows},
                                                         indent=1))
            print(f"[{time.perf_counter() - start:.0f}s] seed {seed} candidate {i + 1}/{args.candidates}: "
                  f"score (loss, {args.score_images[1]} images) {row[f'loss_{args.score_images[1]}']:.4f}, "
                  f"fine-tuned dev top-1 {row['dev_top1']:.4f} ({row['seconds']:.0f}s)", flush=True)
    text = (f"Search proxy: {args.candidates} candidates at {args.fraction:.0%} of MACs removed in one step, "
            f"fine-tuned {args.iters} iterations; baseline seed {args.baseline_seed} (dev {base['dev_top1']:.4f})\n\n"
            + summarise(rows))
    print(text)
    if args.out:
        atomic_write_text(args.out.with_suffix(".md"), text + "\n")


if __name__ == "__main__":
    main()
