"""Criterion quality on the digits: accuracy after one-shot and after entwined pruning, per criterion.

For each seed a small residual network (``digits_resnet``) is trained from scratch on the digits
shards (the seed sets its initialisation and data order). Each criterion then prunes a copy of it to
every budget (fraction of MACs removed), twice, both through the project's own engine (``PruneJob``,
in-process, tracking off):

- **one-shot**: one pruning step, no fine-tuning; top-1 right after the removal;
- **entwined**: ``--steps`` pruning steps with ``--iters`` fine-tune iterations after each and a final
  fine-tune of ``--final-iters`` iterations; final top-1.

Every criterion gets the same calibration batches, the same fine-tuning budget and the same seeds, so
the only difference is which channels it removes. Mean and standard deviation over seeds are printed
as a Markdown table; ``--out`` also writes the table and the raw runs (JSON), ``--plot`` a PNG of
top-1 versus MACs removed per criterion.

    uv run python benchmarks/quality.py --work runs/bench/quality --out docs/results/quality --plot docs/plots/quality.png
    uv run python benchmarks/quality.py --smoke    # seconds, for the test suite
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
DEMO_CONFIG = ROOT / "jobs" / "configs" / "demo.yaml"


@dataclass(frozen=True)
class Criterion:
    """A named criterion setting: its label in tables and plots, and its config overrides."""

    label: str
    overrides: tuple[str, ...]


CRITERIA = {
    c.label: c
    for c in (
        Criterion("singe group signed", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=signed")),
        Criterion("singe group abs", ("criterion.name=singe", "criterion.path=group", "criterion.reduce=abs")),
        Criterion("singe channel signed", ("criterion.name=singe", "criterion.path=channel", "criterion.reduce=signed")),
        Criterion("singe channel abs", ("criterion.name=singe", "criterion.path=channel", "criterion.reduce=abs")),
        Criterion("taylor", ("criterion.name=taylor",)),
        Criterion("magnitude L1", ("criterion.name=magnitude", "criterion.norm=1")),
        Criterion("magnitude L2", ("criterion.name=magnitude", "criterion.norm=2")),
        Criterion("random", ("criterion.name=random",)),
    )
}


def _config(data: dict[str, str], size: int, seed: int, out_dir: Path, extra: list[str]):  # noqa: ANN202
    from singe_dist.config import load_config

    base = [
        f"data.train={data['train']}", f"data.val={data['val']}", f"data.image_size={size}",
        f"data.resize_size={size}", "data.num_workers=0", f"run.seed={seed}", f"run.out_dir={out_dir}",
        "run.latency_batch_sizes=[]", "run.device=cpu", "tracking.enabled=false", "distributed.num_workers=0",
    ]
    return load_config(DEMO_CONFIG, base + extra)


def _run_job(config) -> dict:  # noqa: ANN001
    from singe_dist.engine.loop import PruneJob

    return PruneJob(config, log=lambda _msg: None).run()


def _baseline(data: dict[str, str], size: int, seed: int, iters: int, out: Path) -> float:
    """Train the seed's unpruned network (its init and data order follow ``run.seed``); its top-1."""
    from singe_dist.engine.baseline import train_baseline

    summary = out.with_suffix(".json")  # written by train_baseline after the checkpoint
    if not summary.is_file():
        config = _config(data, size, seed, out.parent / "unused", ["model.checkpoint=null", f"train.iters={iters}"])
        train_baseline(config, out, log=lambda _msg: None)
    return json.loads(summary.read_text())["val"]["top1"]


def _key(seed: int, label: str, fraction: float) -> tuple:
    return (seed, label, round(fraction, 6))


def load_runs(paths: list[Path]) -> dict:
    """Runs and baselines from earlier ``--out`` JSON files (to resume, or to merge separate invocations)."""
    runs, baselines = {}, {}
    for path in paths:
        if path.is_file():
            stored = json.loads(path.read_text())
            runs.update({_key(r["seed"], r["criterion"], r["target"]): r for r in stored["runs"]})
            baselines.update({int(k): v for k, v in stored["baselines"].items()})
    return {"runs": runs, "baselines": baselines}


def run(args: argparse.Namespace) -> dict:
    """Every (seed, criterion, budget) not already in ``args.out``'s JSON; saved after each, so it resumes."""
    from singe_dist.atomic import atomic_write_text
    from singe_dist.data.convert import digits_to_shards

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="singe-quality-"))
    patterns = work / f"data-{args.size}px" / "patterns.json"
    if not patterns.is_file():  # written once per work folder (several invocations may share it)
        written = digits_to_shards(patterns.parent, size=args.size, per_shard=500)
        atomic_write_text(patterns, json.dumps({split: str(s.pattern) for split, s in written.items()}))
    data = json.loads(patterns.read_text())
    store = args.out.with_suffix(".json") if args.out else None
    done = load_runs([store] if store else [])
    common = [f"criterion.steps={args.path_points}", f"criterion.calibration_batches={args.calibration_batches}",
              f"data.batch_size={args.batch_size}", f"finetune.lr={args.lr}"]
    todo = [(s, c, f) for s in args.seeds for c in args.criteria for f in args.fractions if _key(s, c, f) not in done["runs"]]
    start = time.perf_counter()
    for n, (seed, label, fraction) in enumerate(todo, 1):
        checkpoint = work / f"baseline-{args.size}px-seed{seed}-{args.train_iters}it.pt"
        if seed not in done["baselines"]:
            done["baselines"][seed] = _baseline(data, args.size, seed, args.train_iters, checkpoint)
            print(f"seed {seed}: baseline top-1 {done['baselines'][seed]:.4f}", flush=True)
        extra = [*common, *CRITERIA[label].overrides, f"model.checkpoint={checkpoint}", f"prune.remove_fraction={fraction}"]
        tag = f"seed{seed}-{label.replace(' ', '_')}-{fraction}"
        one_shot = _run_job(_config(data, args.size, seed, Path(tempfile.mkdtemp(dir=work, prefix=f"{tag}-oneshot-")),
                                    [*extra, "prune.steps=1", "finetune.iters_per_step=0", "finetune.final_iters=0"]))
        entwined = _run_job(_config(data, args.size, seed, Path(tempfile.mkdtemp(dir=work, prefix=f"{tag}-entwined-")),
                                    [*extra, f"prune.steps={args.steps}", f"finetune.iters_per_step={args.iters}",
                                     f"finetune.final_iters={args.final_iters}"]))
        r = {"seed": seed, "criterion": label, "target": fraction,
             "one_shot_top1": one_shot["steps"][0]["pruned"]["top1"],
             "one_shot_removed": one_shot["steps"][0]["fraction_removed"],
             "entwined_top1": entwined["final"]["top1"], "entwined_removed": entwined["final"]["fraction_removed"],
             "relevance_s": entwined["wall_time_s"]["relevance"], "job_s": entwined["wall_time_s"]["total"]}
        done["runs"][_key(seed, label, fraction)] = r
        if store:
            atomic_write_text(store, json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                 "runs": list(done["runs"].values()),
                                                 "baselines": done["baselines"]}, indent=1))
        print(f"[{n}/{len(todo)} {time.perf_counter() - start:.0f}s] seed {seed} {label} {fraction:.0%}: "
              f"one-shot {r['one_shot_top1']:.4f}, entwined {r['entwined_top1']:.4f}", flush=True)
    return {**done, "seconds": time.perf_counter() - start}


def bn_study(args: argparse.Namespace) -> dict:
    """One-shot pruning with and without re-estimated BatchNorm statistics, on the stored baselines.

    The same calibration batches as the engine's one-shot step (rank 0 of 1, step 0, the seed's
    stream), removal through ``prune_one_shot``; the "one-shot" column must therefore repeat the
    engine's number, which the table shows side by side as a check.
    """
    from singe_dist.checkpoint import load_model
    from singe_dist.data.streams import DataStreams
    from singe_dist.engine.train import evaluate, recalibrate_batchnorm
    from singe_dist.plan.decide import Budget, prune_one_shot

    torch.set_num_threads(args.threads)
    data = json.loads((args.work / f"data-{args.size}px" / "patterns.json").read_text())
    engine_runs = load_runs([args.out.with_suffix(".json")])["runs"] if args.out else {}
    rows = []
    for seed in args.seeds:
        checkpoint = args.work / f"baseline-{args.size}px-seed{seed}-{args.train_iters}it.pt"
        for label in args.criteria:
            config = _config(data, args.size, seed, args.work / "unused",
                             [f"criterion.steps={args.path_points}", f"data.batch_size={args.batch_size}",
                              *CRITERIA[label].overrides])
            streams = DataStreams(config.data, 10, seed=seed)
            calibration = streams.calibration(0, args.calibration_batches)
            for fraction in args.fractions:
                model, arch, classes, _ = load_model(checkpoint, "digits_resnet", 10)
                prune_one_shot(model, arch, classes, (3, args.size, args.size), calibration, config.criterion,
                               Budget("macs", fraction))
                plain = evaluate(model, streams.val()).top1
                recalibrate_batchnorm(model, calibration)
                engine = engine_runs.get(_key(seed, label, fraction), {}).get("one_shot_top1", float("nan"))
                rows.append({"seed": seed, "criterion": label, "target": fraction, "one_shot_top1": plain,
                             "engine_one_shot_top1": engine, "bn_top1": evaluate(model, streams.val()).top1})
                print(f"seed {seed} {label} {fraction:.0%}: one-shot {plain:.4f} (engine {engine:.4f}), "
                      f"BN re-estimated {rows[-1]['bn_top1']:.4f}", flush=True)
    return {"runs": rows}


def bn_table(result: dict, criteria: list[str], fractions: list[float]) -> str:
    from singe_dist.report import format_table

    body = []
    for label in criteria:
        for fraction in fractions:
            sel = [r for r in result["runs"] if r["criterion"] == label and r["target"] == fraction]
            if sel:
                one, bn = (_mean_std([r[k] for r in sel]) for k in ("one_shot_top1", "bn_top1"))
                same = all(abs(r["one_shot_top1"] - r["engine_one_shot_top1"]) < 1e-9 for r in sel)
                body.append([label, f"{fraction:.0%}", f"{one[0]:.4f} ± {one[1]:.4f}", f"{bn[0]:.4f} ± {bn[1]:.4f}",
                             "yes" if same else "no", len(sel)])
    return format_table(["criterion", "MACs removed (target)", "one-shot top-1", "one-shot + BN re-estimated",
                         "equals engine run", "seeds"], body)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(result: dict, criteria: list[str], fractions: list[float]) -> list[dict]:
    """One row per (criterion, budget): mean and spread over seeds."""
    rows = []
    for label in criteria:
        for fraction in fractions:
            sel = [r for r in result["runs"].values() if r["criterion"] == label and r["target"] == fraction]
            if not sel:
                continue
            one_mean, one_std = _mean_std([r["one_shot_top1"] for r in sel])
            ent_mean, ent_std = _mean_std([r["entwined_top1"] for r in sel])
            rows.append({
                "criterion": label, "target": fraction,
                "removed": statistics.fmean(r["entwined_removed"] for r in sel),
                "one_shot": (one_mean, one_std), "entwined": (ent_mean, ent_std),
                "relevance_s": statistics.fmean(r["relevance_s"] for r in sel), "seeds": len(sel),
            })
    return rows


def table(rows: list[dict]) -> str:
    from singe_dist.report import format_table

    headers = ["criterion", "MACs removed", "one-shot top-1", "entwined top-1", "relevance s/run", "seeds"]
    body = [[r["criterion"], f"{r['removed']:.1%}", f"{r['one_shot'][0]:.4f} ± {r['one_shot'][1]:.4f}",
             f"{r['entwined'][0]:.4f} ± {r['entwined'][1]:.4f}", f"{r['relevance_s']:.1f}", r["seeds"]] for r in rows]
    return format_table(headers, body)


def plot(rows: list[dict], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from singe_dist.atomic import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for ax, key, title in ((axes[0], "one_shot", "one-shot (no fine-tuning)"),
                           (axes[1], "entwined", "entwined pruning + fine-tuning")):
        for label in dict.fromkeys(r["criterion"] for r in rows):
            sel = [r for r in rows if r["criterion"] == label]
            style = "-" if label.startswith("singe") else "--"
            ax.errorbar([100 * r["target"] for r in sel], [r[key][0] for r in sel], yerr=[r[key][1] for r in sel],
                        label=label, linestyle=style, marker="o", capsize=3)
        ax.axhline(baseline, color="grey", linewidth=0.8, label="unpruned (mean)")
        ax.set(title=title, xlabel="MACs removed (%)", ylabel="top-1 (digits val)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA), metavar="CRITERION")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.85])
    parser.add_argument("--size", type=int, default=16, help="image size in pixels (the digits are 8x8)")
    parser.add_argument("--train-iters", type=int, default=300, help="baseline training iterations")
    parser.add_argument("--steps", type=int, default=4, help="entwined pruning steps")
    parser.add_argument("--iters", type=int, default=25, help="fine-tune iterations after each step")
    parser.add_argument("--final-iters", type=int, default=50, help="final fine-tune iterations")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.02, help="fine-tune learning rate")
    parser.add_argument("--path-points", type=int, default=4, help="SInGE integration points S")
    parser.add_argument("--calibration-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, help="write OUT.md (table) and OUT.json (every run)")
    parser.add_argument("--plot", type=Path, help="write a PNG of top-1 versus MACs removed")
    parser.add_argument("--work", type=Path, help="keep shards and baselines here (default: a temporary folder)")
    parser.add_argument("--merge", type=Path, nargs="+", help="only print/plot the runs stored in these JSON files")
    parser.add_argument("--bn-study", action="store_true",
                        help="one-shot with and without re-estimated BatchNorm statistics, on --work's baselines")
    parser.add_argument("--smoke", action="store_true", help="tiny settings for the test suite")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.fractions, args.criteria = [0], [0.5], ["singe group signed", "taylor", "magnitude L2"]
        args.train_iters, args.steps, args.iters, args.final_iters = 20, 2, 2, 2
        args.path_points, args.calibration_batches, args.batch_size = 2, 1, 32
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    if args.bn_study:
        if args.work is None:
            parser.error("--bn-study needs --work (the folder with the baselines of an earlier run)")
        study = bn_study(args)
        text = bn_table(study, args.criteria, args.fractions)
        print(text)
        if args.out:
            from singe_dist.atomic import atomic_write_text

            atomic_write_text(args.out.with_name(args.out.name + "-bn.md"), text + "\n")
            atomic_write_text(args.out.with_name(args.out.name + "-bn.json"), json.dumps(study, indent=1))
        return
    if args.merge:
        result = {**load_runs(args.merge), "seconds": 0.0}
        args.seeds = sorted(result["baselines"])
    else:
        result = run(args)
    rows = summarize(result, args.criteria, args.fractions)
    baseline_mean, baseline_std = _mean_std(list(result["baselines"].values()))
    header = (f"digits_resnet {args.size}px, seeds {args.seeds}, unpruned top-1 {baseline_mean:.4f} ± "
              f"{baseline_std:.4f}; entwined: {args.steps} steps x {args.iters} iters + {args.final_iters} final, "
              f"S={args.path_points}, {args.calibration_batches}x{args.batch_size} calibration samples/step; "
              f"threads={args.threads} cpu={platform.machine()} torch={torch.__version__} "
              f"date={datetime.date.today()} ({result['seconds']:.0f}s)")
    text = header + "\n\n" + table(rows)
    print(text)
    if args.out:
        from singe_dist.atomic import atomic_write_text

        atomic_write_text(args.out.with_suffix(".md"), text + "\n")
    if args.plot:
        plot(rows, baseline_mean, args.plot)


if __name__ == "__main__":
    main()
