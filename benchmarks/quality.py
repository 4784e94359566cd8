"""Criterion quality on Fashion-MNIST with a CIFAR-style ResNet-20: which channels does each criterion pick?

Protocol (fixed before any result was looked at; every criterion gets exactly the same treatment):

- **Data.** Fashion-MNIST as shards (``singe-dist shards --fashion-mnist``). Training shards 0-4
  (50,000 images) train the baselines and fine-tune; calibration batches are drawn from them. Shard 5
  (10,000 training images never trained on) is the *development* split on which settings may be
  chosen; the 10,000 test images (``val-000000.tar``) are the split the tables *report*.
- **Baselines.** One ``cifar_resnet20`` per seed, trained from scratch by ``singe-dist train`` with
  ``jobs/configs/fashion_resnet20.yaml`` (the seed sets initialisation and data order).
- **(i) Criterion alone: one-shot.** Each criterion scores the baseline once on the seed's
  calibration batches (the same images for every criterion); for every budget and allocation the
  baseline is pruned in one step, its BatchNorm statistics re-estimated on those batches (for every
  criterion, so stale statistics do not decide: docs/results/quality-bn.md shows what they do on the
  digits), and evaluated without any training.
- **(ii) After fine-tuning: entwined.** The job itself (``PruneJob``, in-process): ``--steps`` pruning
  steps with ``--iters`` fine-tune iterations after each (BN re-estimated after each removal), then
  ``--final-iters`` more. *Short budget*: top-1 after the last step's fine-tuning; *long budget*: after
  the final fine-tune. The channel path of SInGE is left out of (ii) by default: re-scoring every
  channel at every step costs hours here (its one-shot relevance time is in the table).

Results are stored per cell in ``OUT.json`` after each one, so a run resumes where it stopped and
several invocations (one per seed, on different cores) merge with ``--merge``.
Cells measured on different baselines (retrained elsewhere: another network) are refused by a merge and
by a resume. The issue's grid (one-shot with the channel path, entwined without it, 3 seeds) takes about
1 h 30 min in two processes on a 2-core AMD EPYC (docs/BENCHMARKS.md, "Sizing the full sweep").

    uv run python benchmarks/quality.py --work runs/bench/fashion --out docs/results/fashion --seeds 0
    uv run python benchmarks/quality.py --merge docs/results/fashion-s*.json --out docs/results/fashion --plot docs/plots/fashion.png
    uv run python benchmarks/quality.py --device cuda ...    # on a lent GPU (benchmarks/quality_gpu.sh: many at once)
    uv run python benchmarks/quality.py --smoke              # seconds, on the bundled digits, for the test suite
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "jobs" / "configs" / "fashion_resnet20.yaml"


@dataclass(frozen=True)
class Criterion:
    """A named criterion setting: its label in tables and plots, and its config overrides."""

    label: str
    overrides: tuple[str, ...]
    greedy: bool = False  # relevance re-estimated on what is left (one-shot: every GREEDY_EVERY of MACs removed)

    @property
    def channel_path(self) -> bool:
        return "criterion.path=channel" in self.overrides

    @property
    def fine_tune_lever(self) -> bool:
        """A setting of the fine-tuning (distillation): it changes only part (ii), so part (i) skips it."""
        return any(o.startswith("finetune.") for o in self.overrides)


DISTILL = ("finetune.distill_weight=0.5", "finetune.distill_temperature=4")
CRITERIA = {
    c.label: c
    for c in (
        Criterion("singe group signed", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=signed")),
        Criterion("singe group abs", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=abs")),
        Criterion("singe group signed greedy", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=signed",
                                                "prune.substeps=3"), greedy=True),
        Criterion("singe group signed replan", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=signed",
                                                "criterion.replan=2")),
        Criterion("taylor greedy", ("criterion.name=taylor", "prune.substeps=3"), greedy=True),
        Criterion("singe channel signed", ("criterion.name=singe", "criterion.path=channel", "criterion.reduce=signed")),
        Criterion("singe channel abs", ("criterion.name=singe", "criterion.path=channel", "criterion.reduce=abs")),
        Criterion("taylor", ("criterion.name=taylor",)),
        Criterion("magnitude L2", ("criterion.name=magnitude", "criterion.norm=2")),
        Criterion("random", ("criterion.name=random",)),
        # distillation while fine-tuning (weight and temperature fixed before any was measured: Hinton's T = 4)
        Criterion("magnitude L2 distill", ("criterion.name=magnitude", "criterion.norm=2", *DISTILL)),
        Criterion("singe group signed replan distill", ("criterion.name=singe", "criterion.path=group",
                                                        "criterion.reduce=signed", "criterion.replan=2", *DISTILL)),
        Criterion("taylor distill", ("criterion.name=taylor", *DISTILL)),
        Criterion("random distill", ("criterion.name=random", *DISTILL)),
        Criterion("singe channel signed distill", ("criterion.name=singe", "criterion.path=channel",
                                                   "criterion.reduce=signed", *DISTILL)),
        # label-free SInGE: the path integral of the KL divergence to the model before the step, which
        # is its function change (completeness: R_k = KL(k removed)); Taylor has nothing to offer here
        # (the KL's gradient is zero at mu = 1). Registered before any result, with its distilled twin,
        # as distillation fine-tunes towards the same kind of target.
        Criterion("singe group signed kl", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=signed",
                                            "criterion.loss=kl")),
        Criterion("singe group signed kl distill", ("criterion.name=singe", "criterion.path=group",
                                                    "criterion.reduce=signed", "criterion.loss=kl", *DISTILL)),
        # the sensitivity along the path: the per-sample gradient's RMS over the data at each point, integrated
        # (reduce=norm), which between-sample cancellations cannot hide; its single point at mu = 1 is Taylor
        # with reduce=norm (Fisher pruning), measured beside it so a gain is SInGE's path, not the norm.
        # Registered before any result (docs/results/fashion-jobs-norm.txt), with its distilled twin.
        Criterion("singe group norm", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=norm")),
        Criterion("taylor norm", ("criterion.name=taylor", "criterion.reduce=norm")),
        Criterion("singe group norm distill", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=norm",
                                               *DISTILL)),
        # registered after taylor norm tied magnitude L2 without distillation, before any distilled cell of it:
        # if it wins on the development split, the defaults must follow
        Criterion("taylor norm distill", ("criterion.name=taylor", "criterion.reduce=norm", *DISTILL)),
        # the sensitivity of the predictive function itself (the paper's Figure 1: "gradient norm of the
        # predictive function"): per sample the norm of every centred logit's gradient, label-free
        # (criterion.loss=output), integrated along the path; its point mu = 1 beside it, as for the norm.
        # Registered before any result (docs/results/fashion-jobs-output.txt), with SInGE's distilled twin.
        Criterion("singe group norm output", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=norm",
                                              "criterion.loss=output")),
        Criterion("taylor norm output", ("criterion.name=taylor", "criterion.reduce=norm", "criterion.loss=output")),
        Criterion("singe group norm output distill", ("criterion.name=singe", "criterion.path=group",
                                                      "criterion.reduce=norm", "criterion.loss=output", *DISTILL)),
    )
}
ONE_SHOT_DEFAULT = [c for c in CRITERIA if not CRITERIA[c].fine_tune_lever]
ENTWINED_DEFAULT = [c for c in CRITERIA if not CRITERIA[c].channel_path and not CRITERIA[c].fine_tune_lever]
GREEDY_EVERY = 0.1
# allocation (how many channels each group loses) -> its config overrides. The sweep's default is the first
# two; the others are global allocation with one limit each, fixed before they were measured: no group
# loses more than 3/4 of its original width (feasible at every budget: uniform removal takes 61% of each
# group at 85% of MACs), or units ranked by relevance per MAC they save.
ALLOCATIONS = {
    "global": ("prune.allocation=global",),
    "uniform": ("prune.allocation=uniform",),
    "global-cap75": ("prune.allocation=global", "prune.max_remove_fraction=0.75"),
    "global-per-mac": ("prune.allocation=global", "prune.normalize_by_cost=true"),
}
DEFAULT_ALLOCATIONS = ("global", "uniform")


def prepare_data(args: argparse.Namespace) -> dict[str, str]:
    """Shards of the benchmark's data in ``--work`` (written once): train, dev and test patterns."""
    from singe_dist.atomic import atomic_write_text

    folder = args.work / f"data-{args.dataset}"
    patterns = folder / "patterns.json"
    if not patterns.is_file():
        if args.dataset == "fashion":
            from singe_dist.data.convert import fashion_mnist_to_shards

            fashion_mnist_to_shards(folder, source=args.source, per_shard=10000)
            found = {"train": str(folder / "train-{000000..000004}.tar"), "dev": str(folder / "train-000005.tar"),
                     "test": str(folder / "val-000000.tar")}
        else:  # the bundled digits, for --smoke: the dev split is the test split (nothing is chosen on it)
            from singe_dist.data.convert import digits_to_shards

            written = digits_to_shards(folder, size=args.size, per_shard=500)
            found = {"train": written["train"].pattern, "dev": written["val"].pattern, "test": written["val"].pattern}
        atomic_write_text(patterns, json.dumps(found))
    return json.loads(patterns.read_text())


def job_config(args: argparse.Namespace, data: dict[str, str], seed: int, out_dir: Path, extra: list[str],
               val: str = "test"):  # noqa: ANN201
    from singe_dist.config import load_config

    base = [f"data.train={data['train']}", f"data.val={data[val]}", "data.num_workers=0", f"run.seed={seed}",
            f"run.out_dir={out_dir}", "run.latency_batch_sizes=[]", f"run.device={args.device}",
            "tracking.enabled=false", "distributed.num_workers=0", f"criterion.steps={args.path_points}",
            f"criterion.calibration_batches={args.calibration_batches}", f"data.batch_size={args.batch_size}",
            f"prune.bn_batches={args.calibration_batches}", f"train.iters={args.train_iters}",
            "finetune.distill_weight=0"]  # the job's default distils; here only the settings that say so (DISTILL)
    if args.dataset == "digits":
        base += [f"data.image_size={args.size}", f"data.resize_size={args.size}", "data.mean=[0.305,0.305,0.305]",
                 "data.std=[0.324,0.324,0.324]", "data.hflip=false", "data.train_samples=1437"]
    return load_config(CONFIG, base + extra)


def baseline(args: argparse.Namespace, data: dict[str, str], seed: int) -> tuple[Path, dict]:
    """The seed's unpruned network (trained once per work folder) and its top-1 on dev and test."""
    from singe_dist.engine.baseline import train_baseline

    path = args.work / f"baseline-seed{seed}.pt"
    summary = path.with_suffix(".json")
    if not summary.is_file():
        print(f"seed {seed}: training the baseline ({args.train_iters} iterations)", flush=True)
        train_baseline(job_config(args, data, seed, args.work / "unused", ["model.checkpoint=null"]), path,
                       log=lambda _m: None)
    scores = json.loads(summary.read_text())
    if "dev_top1" not in scores:
        scores["dev_top1"] = evaluate_checkpoint(args, data, seed, path, "dev")
        scores["test_top1"] = evaluate_checkpoint(args, data, seed, path, "test")
        summary.write_text(json.dumps(scores, indent=1))
    return path, scores


def evaluate_checkpoint(args: argparse.Namespace, data: dict[str, str], seed: int, path: Path, split: str) -> float:
    from singe_dist.checkpoint import load_model
    from singe_dist.data.streams import DataStreams
    from singe_dist.engine.train import evaluate

    config = job_config(args, data, seed, args.work / "unused", [], val=split)
    model, _, _, _ = load_model(path)
    return evaluate(model.to(_device(args)), DataStreams(config.data, 10, seed=seed, training=False).val()).top1


def _device(args: argparse.Namespace) -> torch.device:
    return torch.device("cuda" if args.device == "cuda" else "cpu")


def _identity(base: dict) -> tuple:
    """What tells one trained baseline from another."""
    return base.get("train_loss"), base.get("test_top1"), base.get("dev_top1")


class Store:
    """Every finished cell, saved after each one (atomic), keyed by what defines it."""

    def __init__(self, path: Path | None, args: argparse.Namespace) -> None:
        self.path, self.args = path, args
        self.data: dict = {"oneshot": {}, "entwined": {}, "baselines": {}}
        if path is not None and path.is_file():
            stored = json.loads(path.read_text())
            for part in ("oneshot", "entwined"):
                self.data[part] = {self.key(r): r for r in stored[part]}
            self.data["baselines"] = stored["baselines"]

    @staticmethod
    def key(row: dict) -> str:
        return f"{row['seed']}|{row['criterion']}|{row['allocation']}|{row['target']:.4f}"

    def add(self, part: str, row: dict) -> None:
        self.data[part][self.key(row)] = row
        self.save()

    def add_baseline(self, seed: str, base: dict, source: object) -> None:
        """Record the seed's unpruned network; refuse one that differs from the network this store's cells were
        measured on (a baseline retrained on another machine is another network: its cells are not comparable)."""
        known = self.data["baselines"].get(seed)
        if known is not None and _identity(known) != _identity(base):
            raise SystemExit(f"quality.py: {source} holds a seed-{seed} baseline (test top-1 {base.get('test_top1')}) "
                             f"other than the one of {self.path or 'the stores before it'} ({known.get('test_top1')}): "
                             "cells on different baselines are not comparable; keep them in separate stores and tables")
        self.data["baselines"][seed] = base

    def save(self) -> None:
        if self.path is None:
            return
        from singe_dist.atomic import atomic_write_text

        atomic_write_text(self.path, json.dumps({
            "args": {k: str(v) for k, v in vars(self.args).items()}, "baselines": self.data["baselines"],
            "oneshot": list(self.data["oneshot"].values()), "entwined": list(self.data["entwined"].values())}, indent=1))


def one_shot(args: argparse.Namespace, data: dict[str, str], store: Store) -> None:
    """(i): every criterion scores the seed's baseline once; every budget x allocation prunes a copy of it."""
    from singe_dist.checkpoint import load_model
    from singe_dist.data.streams import DataStreams
    from singe_dist.engine.train import evaluate, recalibrate_batchnorm
    from singe_dist.plan.decide import Budget, prune_one_shot
    from singe_dist.relevance.criteria import accumulate, compute_relevance
    from singe_dist.relevance.groups import example_input, find_groups

    sums_cache: dict = {}
    for seed in args.seeds:
        path, base = baseline(args, data, seed)
        store.add_baseline(str(seed), base, args.work)
        for label in args.criteria:
            cells = [(a, f) for a in args.allocations for f in args.fractions
                     if Store.key({"seed": seed, "criterion": label, "allocation": a, "target": f})
                     not in store.data["oneshot"]]
            if not cells:
                continue
            config = job_config(args, data, seed, args.work / "unused", list(CRITERIA[label].overrides))
            size = (3, config.data.image_size, config.data.image_size)
            streams = DataStreams(config.data, 10, seed=seed)
            calibration = streams.calibration(0, args.calibration_batches)  # the engine's step-1 batches
            dev = DataStreams(job_config(args, data, seed, args.work / "unused", [], val="dev").data, 10, seed=seed,
                              training=False)
            test_batches, dev_batches = list(streams.val()), list(dev.val())  # decoded once, evaluated many times
            model, _, _, _ = load_model(path)
            model = model.to(_device(args))
            crit = config.criterion
            groups = find_groups(model, example_input(model, size))
            t0 = time.perf_counter()
            if crit.name == "singe":  # signed and abs finalize the same sums: integrate each path once per seed
                key = (seed, crit.path, crit.loss, crit.reduce == "norm")  # norm sums squares: its own sums
                cached = sums_cache.get(key)
                if cached is None:
                    cached = sums_cache[key] = (accumulate(model, groups, calibration, crit), time.perf_counter() - t0)
                scores, seconds = cached[0].finalize(crit.reduce), cached[1]
            else:
                scores = compute_relevance(model, groups, calibration, crit)
                seconds = time.perf_counter() - t0
            if CRITERIA[label].greedy:
                greedy_one_shot(args, data, seed, label, path, config, cells, calibration, test_batches, dev_batches,
                                store)
                continue
            for allocation, fraction in cells:
                pruned, _, _, _ = load_model(path)
                pruned = pruned.to(_device(args))
                prune_one_shot(pruned, config.model.arch, 10, size, calibration, config.criterion,
                               Budget("macs", fraction), _policy(args, data, seed, allocation), scores=scores)
                recalibrate_batchnorm(pruned, calibration)
                row = {"seed": seed, "criterion": label, "allocation": allocation, "target": fraction,
                       "top1": evaluate(pruned, test_batches).top1, "dev_top1": evaluate(pruned, dev_batches).top1, "relevance_s": seconds}
                store.add("oneshot", row)
                print(f"one-shot seed {seed} {label} {allocation} {fraction:.0%}: top-1 {row['top1']:.4f} "
                      f"(dev {row['dev_top1']:.4f}, relevance {seconds:.0f}s)", flush=True)


def _policy(args: argparse.Namespace, data: dict[str, str], seed: int, allocation: str,
            original_sizes: dict[str, int] | None = None):  # noqa: ANN202
    """The planner's policy for ``allocation``, read from the job config as the entwined job reads it."""
    return job_config(args, data, seed, args.work / "unused", list(ALLOCATIONS[allocation])).prune.policy(original_sizes)


def greedy_one_shot(args, data, seed, label, path, config, cells, calibration, test_batches, dev_batches,  # noqa: ANN001
                    store) -> None:  # noqa: ANN001
    """One-shot removal in small greedy stages: every ``GREEDY_EVERY`` of the MACs, relevance is re-estimated
    on the network that is left (BatchNorm re-estimated first), then the next stage is removed.

    One trajectory per allocation serves every budget: the stages stop at each budget of ``cells``.
    """
    from singe_dist.checkpoint import load_model
    from singe_dist.engine.train import evaluate, recalibrate_batchnorm
    from singe_dist.plan.cost import measure
    from singe_dist.plan.decide import decide_and_remove
    from singe_dist.relevance.criteria import compute_relevance
    from singe_dist.relevance.groups import example_input, find_groups

    size = (3, config.data.image_size, config.data.image_size)
    for allocation in dict.fromkeys(a for a, _ in cells):
        wanted = sorted(f for a, f in cells if a == allocation)
        stops = sorted({round(GREEDY_EVERY * i, 6) for i in range(1, int(wanted[-1] / GREEDY_EVERY) + 1)} | set(wanted))
        model, _, _, _ = load_model(path)
        model = model.to(_device(args))
        original = measure(model, size).macs
        original_sizes = {g.id: g.size for g in find_groups(model, example_input(model, size))}
        policy = _policy(args, data, seed, allocation, original_sizes)
        t0 = time.perf_counter()
        for fraction in stops:
            groups = find_groups(model, example_input(model, size))
            scores = compute_relevance(model, groups, calibration, config.criterion)
            decide_and_remove(model, groups, scores, size, original * (1 - fraction), policy)
            recalibrate_batchnorm(model, calibration)
            if fraction in wanted:
                row = {"seed": seed, "criterion": label, "allocation": allocation, "target": fraction,
                       "top1": evaluate(model, test_batches).top1, "dev_top1": evaluate(model, dev_batches).top1,
                       "relevance_s": time.perf_counter() - t0, "stages": stops.index(fraction) + 1}
                store.add("oneshot", row)
                print(f"one-shot seed {seed} {label} {allocation} {fraction:.0%}: top-1 {row['top1']:.4f} "
                      f"(dev {row['dev_top1']:.4f}, {row['stages']} stages, {row['relevance_s']:.0f}s)", flush=True)


def entwined(args: argparse.Namespace, data: dict[str, str], store: Store) -> None:
    """(ii): the job, entwined pruning and fine-tuning, per (seed, criterion, allocation, budget)."""
    from singe_dist.engine.loop import PruneJob

    todo = [(s, c, a, f) for s in args.seeds for f in args.fractions for a in args.allocations
            for c in args.entwined_criteria
            if Store.key({"seed": s, "criterion": c, "allocation": a, "target": f}) not in store.data["entwined"]]
    start = time.perf_counter()
    for n, (seed, label, allocation, fraction) in enumerate(todo, 1):
        path, base = baseline(args, data, seed)
        store.add_baseline(str(seed), base, args.work)
        out = Path(tempfile.mkdtemp(dir=args.work, prefix=f"s{seed}-{label.replace(' ', '_')}-{allocation}-{fraction}-"))
        extra = [*CRITERIA[label].overrides, f"model.checkpoint={path}", f"prune.remove_fraction={fraction}",
                 *ALLOCATIONS[allocation], f"prune.steps={args.steps}", f"finetune.iters_per_step={args.iters}",
                 f"finetune.final_iters={args.final_iters}", f"finetune.lr={args.lr}", "run.eval_after_prune=false",
                 *args.set]
        config = job_config(args, data, seed, out, extra)
        if not config.run.eval_after_step:
            raise SystemExit("quality.py: short_top1 is the evaluation after the last step; drop run.eval_after_step")
        report = PruneJob(config, log=lambda _m: None).run()
        row = {"seed": seed, "criterion": label, "allocation": allocation, "target": fraction,
               "short_top1": report["steps"][-1]["finetuned"]["top1"], "long_top1": report["final"]["top1"],
               "long_dev_top1": evaluate_checkpoint(args, data, seed, out / "pruned.pt", "dev"),
               "removed": report["final"]["fraction_removed"], "relevance_s": report["wall_time_s"]["relevance"],
               "job_s": report["wall_time_s"]["total"], "set": list(args.set)}
        store.add("entwined", row)
        print(f"[{n}/{len(todo)} {time.perf_counter() - start:.0f}s] entwined seed {seed} {label} {allocation} "
              f"{fraction:.0%}: short {row['short_top1']:.4f}, long {row['long_top1']:.4f}", flush=True)


def diagnose(args: argparse.Namespace, data: dict[str, str], seed: int, fraction: float) -> str:
    """Why a criterion wins or loses, on the seed's trained baseline and its calibration batches.

    - *leave-one-out*: the measured loss increase of removing each channel alone (its gate at 0,
      which equals removal), against each criterion's scores (Pearson and Spearman correlation);
    - *joint removal*: at ``fraction`` of the MACs (global allocation), the loss increase the removed
      set would cause if single-channel effects added up (the sum of their leave-one-out increases)
      against the increase measured when they all go at once (BN re-estimated, as in part (i));
    - *which layers*: the share of each stage's channels the criterion removes;
    - *held out*: leave-one-out measured again on ``--heldout`` images of the development split, which
      no criterion saw. How well the calibration images' own leave-one-out predicts it bounds what any
      criterion computed from them can do; the within-group rank correlation is what ``uniform``
      allocation uses (it ranks channels only inside each group).
    """
    import copy

    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    from singe_dist.checkpoint import load_model
    from singe_dist.data.streams import DataStreams
    from singe_dist.engine.train import evaluate, recalibrate_batchnorm
    from singe_dist.plan.cost import CostModel
    from singe_dist.plan.select import Policy, select_channels
    from singe_dist.plan.plan import apply_step
    from singe_dist.relevance.criteria import accumulate, compute_relevance
    from singe_dist.relevance.groups import Gates, example_input, find_groups
    from singe_dist.report import format_table

    path, _ = baseline(args, data, seed)
    config = job_config(args, data, seed, args.work / "unused", [])
    size = (3, config.data.image_size, config.data.image_size)
    calibration = DataStreams(config.data, 10, seed=seed).calibration(0, args.calibration_batches)
    model, _, _, _ = load_model(path)
    model.eval()
    groups = find_groups(model, example_input(model, size))
    gates = Gates(groups)

    dev_data = job_config(args, data, seed, args.work / "unused", [], val="dev").data
    heldout, seen = [], 0
    for x, y in DataStreams(dev_data, 10, seed=seed, training=False).val():
        heldout.append((x[: args.heldout - seen], y[: args.heldout - seen]))
        seen += len(heldout[-1][0])
        if seen >= args.heldout:
            break

    def loss_on(batches: list, m: torch.nn.Module, gate: dict | None = None) -> float:
        with torch.no_grad():
            if gate is None:
                return evaluate(m, batches).loss
            with gates.active({gid: g.expand(len(batches[0][0]), -1) for gid, g in gate.items()}):
                return evaluate(m, batches).loss

    def leave_one_out(batches: list, name: str) -> tuple[float, dict[str, torch.Tensor]]:
        """The loss on ``batches`` and the measured increase of removing each channel alone (gate at 0 = removal)."""
        base = loss_on(batches, model)
        out, t0, channels = {}, time.perf_counter(), sum(g.size for g in groups)
        for i, g in enumerate(groups):
            if i % 5 == 0:
                done = sum(h.size for h in groups[:i])
                print(f"leave-one-out on the {name}: {done}/{channels} channels, {time.perf_counter() - t0:.0f}s",
                      flush=True)
            row = torch.zeros(g.size, dtype=torch.float64)
            for k in range(g.size):
                gate = torch.ones(1, g.size)
                gate[0, k] = 0.0
                row[k] = loss_on(batches, model, {g.id: gate}) - base
            out[g.id] = row
        return base, out

    base_loss, loo = leave_one_out(calibration, "calibration images")
    held_loss, held = leave_one_out(heldout, "held-out images")
    flat_loo = torch.cat([loo[g.id] for g in groups]).numpy()
    flat_held = torch.cat([held[g.id] for g in groups]).numpy()

    def within_groups(scores: dict[str, torch.Tensor]) -> float:
        """Mean over groups of the Spearman correlation of ``scores`` with held-out leave-one-out."""
        return float(np.mean([spearmanr(scores[g.id].numpy(), held[g.id].numpy())[0] for g in groups if g.size > 2]))

    held_rows = [["leave-one-out on the calibration images", f"{pearsonr(flat_loo, flat_held)[0]:.3f}",
                  f"{spearmanr(flat_loo, flat_held)[0]:.3f}", f"{within_groups(loo):.3f}"]]
    rows, strips = [], []
    stages = {"stem + stage 1": ("conv1", "layer1"), "stage 2": ("layer2",), "stage 3": ("layer3",)}
    for label in args.criteria:
        crit = job_config(args, data, seed, args.work / "unused", [o for o in CRITERIA[label].overrides
                                                                        if o.startswith("criterion.")]).criterion
        if crit.name == "singe":
            scores = accumulate(model, groups, calibration, crit).finalize(crit.reduce)
        else:
            scores = compute_relevance(model, groups, calibration, crit)
        flat = torch.cat([scores[g.id] for g in groups]).numpy()
        pruned = copy.deepcopy(model)
        cost = CostModel(pruned, find_groups(pruned, example_input(pruned, size)), size)
        chosen = select_channels(scores, cost, cost.macs * (1 - fraction), Policy(allocation="global")).channels
        predicted = sum(float(loo[gid][idx].sum()) for gid, idx in chosen.items())
        apply_step(pruned, chosen, size)
        recalibrate_batchnorm(pruned, calibration)
        measured = loss_on(calibration, pruned) - base_loss
        rows.append([label, f"{pearsonr(flat, flat_loo)[0]:.3f}", f"{spearmanr(flat, flat_loo)[0]:.3f}",
                     f"{predicted:.3f}", f"{measured:.3f}"])
        held_rows.append([label, f"{pearsonr(flat, flat_held)[0]:.3f}", f"{spearmanr(flat, flat_held)[0]:.3f}",
                          f"{within_groups(scores):.3f}"])
        share = []
        for name, prefixes in stages.items():
            members = [g for g in groups if g.id.startswith(prefixes)]
            total = sum(g.size for g in members)
            share.append(f"{sum(len(chosen.get(g.id, [])) for g in members) / total:.0%}")
        strips.append([label, *share])
    header = (f"seed {seed}, {args.calibration_batches}x{args.batch_size} calibration images, S={args.path_points}, "
              f"calibration loss of the unpruned network {base_loss:.4f}; joint removal at {fraction:.0%} of the MACs, "
              "global allocation")
    return "\n\n".join([
        header,
        format_table(["criterion", "Pearson vs leave-one-out", "Spearman vs leave-one-out",
                      "sum of leave-one-out increases of the removed set", "measured joint increase (BN re-estimated)"],
                     rows),
        format_table(["criterion", *[f"{name}: channels removed" for name in stages]], strips),
        f"Against leave-one-out measured on {seen} held-out images of the development split (calibration loss "
        f"{held_loss:.4f} there):",
        format_table(["scores", "Pearson vs held-out leave-one-out", "Spearman vs held-out leave-one-out",
                      "within-group Spearman (mean over groups)"], held_rows)])


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = _mean_std(values)
    return f"{mean:.4f} ± {std:.4f}"


def _pick(data: dict, part: str, label: str, allocation: str, fraction: float, key: str) -> list[float]:
    """``key`` of every stored cell of ``part`` for this criterion, allocation and budget (one per seed)."""
    return [r[key] for r in data[part].values() if r["criterion"] == label and r["allocation"] == allocation
            and abs(r["target"] - fraction) < 1e-9]


def table(data: dict, criteria: list[str], allocations: list[str], fractions: list[float]) -> str:
    """One row per (budget, allocation, criterion): mean ± standard deviation over seeds, test split."""
    from singe_dist.report import format_table

    body = []
    for fraction in fractions:
        for allocation in allocations:
            for label in criteria:
                cell = lambda part, key: _pick(data, part, label, allocation, fraction, key)  # noqa: E731
                one, short, long_, rel = (cell("oneshot", "top1"), cell("entwined", "short_top1"),
                                          cell("entwined", "long_top1"), cell("oneshot", "relevance_s"))
                if not one and not short:
                    continue
                body.append([f"{fraction:.0%}", allocation, label, _cell(one), _cell(short), _cell(long_),
                             f"{statistics.fmean(rel):.1f}" if rel else "-", f"{len(one)}/{len(short)}"])
    return format_table(["MACs removed", "allocation", "criterion", "one-shot, BN re-estimated",
                         "entwined, short FT", "entwined, long FT", "one-shot relevance s", "seeds (one-shot/entwined)"], body)


BASELINES = ("taylor", "magnitude L2", "random")


def dev_choice(data: dict, fractions: list[float]) -> tuple[list[tuple[str, str]], str]:
    """Which setting (criterion x allocation) a user should get, chosen on the *development* split only.

    The rule, fixed before the grid was run: the setting with the highest mean development top-1 after
    the entwined job's long fine-tune (what the job delivers), averaged over ``fractions`` (the goal's
    budgets, 70% and 85%, by default); one-shot development top-1 is shown beside it for reference. Only settings with
    entwined cells for every seed and budget compete, so a partial setting cannot win on fewer seeds.
    Returns the competing settings, best first, and the table.
    """
    from singe_dist.report import format_table

    seeds = {r["seed"] for r in data["entwined"].values()}
    settings = sorted({(r["criterion"], r["allocation"]) for r in data["entwined"].values()})
    rows = []
    for label, allocation in settings:
        per = [_pick(data, "entwined", label, allocation, f, "long_dev_top1") for f in fractions]
        if any(len(v) < len(seeds) for v in per):
            continue
        one = [statistics.fmean(v) if v else float("nan")
               for v in (_pick(data, "oneshot", label, allocation, f, "dev_top1") for f in fractions)]
        score = statistics.fmean(statistics.fmean(v) for v in per)
        rows.append([label, allocation, *(f"{statistics.fmean(v):.4f}" for v in per), f"{score:.4f}",
                     *(f"{v:.4f}" for v in one)])
    rows.sort(key=lambda r: -float(r[2 + len(fractions)]))
    headers = ["criterion", "allocation", *(f"entwined long, dev, {f:.0%}" for f in fractions), "mean (decides)",
               *(f"one-shot, dev, {f:.0%}" for f in fractions)]
    text = (f"Development split ({len(seeds)} seeds; only settings complete on every seed and budget compete)\n\n"
            + format_table(headers, rows))
    return [(r[0], r[1]) for r in rows], text


def verdict(data: dict, setting: tuple[str, str], fractions: list[float]) -> str:
    """The issue's goal, checked on the test split: does ``setting`` beat each baseline criterion (at the
    baseline's better allocation on the development split) by more than the seed spread?

    "More than the seed spread" means: difference of means > the larger of the two standard deviations
    over seeds. Reported for one-shot (BN re-estimated), entwined short and entwined long. A setting
    that distils is also checked against the baselines that distil too, where they were measured: the
    like-for-like comparison of criteria (the rows without distillation show what the lever adds).
    """
    from singe_dist.report import format_table

    label, allocation = setting
    lever = [f"{b} distill" for b in BASELINES] if CRITERIA[label].fine_tune_lever else []
    measures = (("oneshot", "top1", "dev_top1", "one-shot"), ("entwined", "short_top1", "long_dev_top1", "short FT"),
                ("entwined", "long_top1", "long_dev_top1", "long FT"))
    rows = []
    for fraction in fractions:
        for part, key, dev_key, name in measures:
            mine = _pick(data, part, label, allocation, fraction, key)
            if not mine:
                continue
            for base in (b for b in (*BASELINES, *lever) if b != label):
                # the baseline's allocation is chosen on the development split, among those it has on
                # as many seeds as the setting (a mean over fewer seeds must not decide)
                options = [(len(d) >= len(mine), statistics.fmean(d), a) for a in ALLOCATIONS
                           if (d := _pick(data, part, base, a, fraction, dev_key))]
                if not options:
                    continue
                alloc = max(options)[2]
                theirs = _pick(data, part, base, alloc, fraction, key)
                (m1, s1), (m2, s2) = _mean_std(mine), _mean_std(theirs)
                spread = max(s1, s2)
                rows.append([f"{fraction:.0%}", name, f"{base} ({alloc})", f"{m1:.4f} ± {s1:.4f}",
                             f"{m2:.4f} ± {s2:.4f}", f"{m1 - m2:+.4f}",
                             "yes" if m1 - m2 > spread and min(len(mine), len(theirs)) > 1 else "no",
                             f"{len(mine)}/{len(theirs)}"])
    return (f"Goal check on the test split: {label} with {allocation} allocation against each baseline at its "
            "better allocation (chosen on the development split)\n\n"
            + format_table(["MACs removed", "measure", "baseline", label, "baseline top-1", "difference",
                            "beats by more than the seed spread", "seeds"], rows))


def plot(data: dict, criteria: list[str], allocations: list[str], fractions: list[float], base: float,
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from singe_dist.atomic import atomic_write

    panels = [("oneshot", "top1", "one-shot, BN re-estimated"), ("entwined", "short_top1", "entwined, short fine-tune"),
              ("entwined", "long_top1", "entwined, long fine-tune")]
    fig, axes = plt.subplots(len(allocations), 3, figsize=(15, 4.2 * len(allocations)), squeeze=False)
    for i, allocation in enumerate(allocations):
        for j, (part, key, title) in enumerate(panels):
            ax = axes[i][j]
            for label in criteria:
                xs, ys, es = [], [], []
                for f in fractions:
                    sel = _pick(data, part, label, allocation, f, key)
                    if sel:
                        m, s = _mean_std(sel)
                        xs.append(100 * f), ys.append(m), es.append(s)
                if xs:
                    ax.errorbar(xs, ys, yerr=es, label=label, marker="o", capsize=3,
                                color=plt.get_cmap("tab20")(criteria.index(label) % 20),  # one colour per criterion
                                linestyle="-" if label.startswith("singe") else "--")
            ax.axhline(base, color="grey", linewidth=0.8, label="unpruned (mean)")
            ax.set(title=f"{title} ({allocation})", xlabel="MACs removed (%)", ylabel="top-1 (test)")
            ax.grid(alpha=0.3)
    legend = {}  # one entry per criterion drawn in any panel (some have entwined cells only)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.03 + 0.012 * ((len(legend) + 4) // 5), 1, 1))
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--criteria", nargs="+", default=ONE_SHOT_DEFAULT, choices=list(CRITERIA), metavar="CRITERION")
    parser.add_argument("--entwined-criteria", nargs="*", default=ENTWINED_DEFAULT, choices=list(CRITERIA),
                        metavar="CRITERION", help="criteria of part (ii) (default: all but the channel path)")
    parser.add_argument("--allocations", nargs="+", default=list(DEFAULT_ALLOCATIONS), choices=list(ALLOCATIONS))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.7, 0.85])
    parser.add_argument("--decide-fractions", type=float, nargs="+", default=[0.7, 0.85],
                        help="budgets on which the default setting is chosen (development split)")
    parser.add_argument("--phase", choices=("oneshot", "entwined", "all"), default="all")
    parser.add_argument("--dataset", choices=("fashion", "digits"), default="fashion")
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST idx files")
    parser.add_argument("--size", type=int, default=16, help="digits only: image size")
    parser.add_argument("--train-iters", type=int, default=1000, help="baseline training iterations (batch 128)")
    parser.add_argument("--steps", type=int, default=3, help="entwined pruning steps")
    parser.add_argument("--iters", type=int, default=25, help="fine-tune iterations after each step (short budget)")
    parser.add_argument("--final-iters", type=int, default=200, help="final fine-tune iterations (long budget)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.02, help="fine-tune learning rate")
    parser.add_argument("--path-points", type=int, default=4, help="SInGE integration points S")
    parser.add_argument("--calibration-batches", type=int, default=2, help="calibration batches (relevance and BN)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra job overrides for part (ii), e.g. prune.substeps=2 (a method variant)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="write OUT.md (table) and OUT.json (every cell)")
    parser.add_argument("--plot", type=Path, help="write a PNG of top-1 versus MACs removed")
    parser.add_argument("--work", type=Path, help="shards, baselines and job folders (default: a temporary folder)")
    parser.add_argument("--merge", type=Path, nargs="+", help="only tabulate/plot the cells stored in these JSON files")
    parser.add_argument("--diagnose", type=float, metavar="FRACTION",
                        help="leave-one-out and joint-removal diagnosis on the first seed's baseline at FRACTION")
    parser.add_argument("--heldout", type=int, default=1000,
                        help="--diagnose: development-split images on which leave-one-out is measured again")
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the bundled digits, for the test suite")
    args = parser.parse_args()
    if args.smoke:
        args.dataset, args.seeds, args.fractions = "digits", [0], [0.5]
        args.decide_fractions = [0.5]
        args.criteria = args.entwined_criteria = ["singe group signed", "taylor", "magnitude L2"]
        args.train_iters, args.steps, args.iters, args.final_iters = 20, 2, 2, 2
        args.path_points, args.calibration_batches, args.batch_size, args.heldout = 2, 1, 32, 64
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.merge:
        store, devices = Store(None, args), set()
        for path in args.merge:
            devices.add(json.loads(path.read_text()).get("args", {}).get("device", "cpu"))
            part = Store(path, args)
            for name in ("oneshot", "entwined"):
                store.data[name].update(part.data[name])
            for seed, base in part.data["baselines"].items():
                store.add_baseline(seed, base, path)
    else:
        devices = {args.device}
        args.work = args.work or Path(tempfile.mkdtemp(prefix="singe-quality-"))
        args.work.mkdir(parents=True, exist_ok=True)
        store = Store(args.out.with_suffix(".json") if args.out else None, args)
        data = prepare_data(args)
        if args.diagnose is not None:
            text = diagnose(args, data, args.seeds[0], args.diagnose)
            print(text)
            if args.out:
                from singe_dist.atomic import atomic_write_text

                atomic_write_text(args.out.with_suffix(".md"), text + "\n")
            return
        if args.phase in ("oneshot", "all"):
            one_shot(args, data, store)
        if args.phase in ("entwined", "all"):
            entwined(args, data, store)
    bases = store.data["baselines"]
    test_m, test_s = _mean_std([b["test_top1"] for b in bases.values()]) if bases else (float("nan"), 0.0)
    header = (f"{args.dataset} cifar_resnet20, seeds {sorted(int(s) for s in bases)}, unpruned top-1 (test) "
              f"{test_m:.4f} ± {test_s:.4f}; calibration {args.calibration_batches}x{args.batch_size} images, "
              f"S={args.path_points}; entwined: {args.steps} steps x {args.iters} iters (short) + {args.final_iters} "
              f"final (long); threads={args.threads} device={'+'.join(sorted(devices))} "
              + (f"merged from {len(args.merge)} stores (each store's machine and torch: docs/BENCHMARKS.md)"
                 if args.merge else f"cpu={platform.machine()} torch={torch.__version__} date={datetime.date.today()} "
                 f"({time.perf_counter() - start:.0f}s)"))
    shown = list(CRITERIA)  # every setting with stored cells gets its row (the table skips the others)
    # every allocation with stored cells gets its rows and its plot panels (a merge may hold more than asked for)
    stored = {r["allocation"] for part in ("oneshot", "entwined") for r in store.data[part].values()}
    allocations = [a for a in ALLOCATIONS if a in stored or a in args.allocations]
    text = header + "\n\n" + table(store.data, shown, allocations, args.fractions)
    if store.data["entwined"]:
        ranked, choice_text = dev_choice(store.data, args.decide_fractions)
        text += "\n\n" + choice_text
        if ranked:  # the winner, and SInGE's best setting if the winner is not SInGE
            for setting in dict.fromkeys([ranked[0], *[s for s in ranked if s[0].startswith("singe")][:1]]):
                text += "\n\n" + verdict(store.data, setting, args.fractions)
    print(text)
    if args.out:
        from singe_dist.atomic import atomic_write_text

        atomic_write_text(args.out.with_suffix(".md"), text + "\n")
    if args.plot:
        plot(store.data, shown, [a for a in allocations if a in stored], args.fractions, test_m, args.plot)


if __name__ == "__main__":
    main()
