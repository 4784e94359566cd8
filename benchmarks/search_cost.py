"""What ``prune.allocation: search`` costs: candidates per second on 1 and 2 workers, and its share of a job.

A candidate is a copy of the model pruned to one width vector, its BatchNorm re-estimated on
``prune.bn_batches`` calibration batches and scored on ``prune.search_batches`` more
(singe_dist/engine/search.py). Its cost is therefore bookkeeping (copy, selection, surgery) plus
``bn_batches + search_batches`` forward batches; the ranks split the candidates and all-reduce one score
vector.

Measured here:

1. **The job itself**, ResNet-20 on the fair fight's Fashion-MNIST shards, 3 entwined steps to 70% of the
   MACs, ``search_candidates=8``, a short fine-tune: in this process (1 worker, 1 torch thread) and on 2
   Ray Train workers of an embedded local Ray (1 CPU and 1 torch thread each). The report's
   ``wall_time_s.search`` (rank 0, all-reduce included) over the candidates scored gives candidates/s.
2. **Its share of a job's compute**: the search's seconds for 3 steps against the fair fight's default
   cell at the long budget on the same baseline (``--cell``: its stored ``seconds``), both on 1 worker.
3. **The parts of a ResNet-50 estimate**: one candidate's bookkeeping on torchvision ResNet-50 at 224 px
   (1,000 classes, random init: the cost does not depend on the weights), timed on this CPU. The forward
   batches are priced from the H200 measurement in docs/BENCHMARKS.md (GPU throughput): training at
   1,804 images/s at batch 64 in fp32, a forward a third of a training pass.

    uv run python benchmarks/search_cost.py --work runs/bench/fair --checkpoint runs/bench/fair/baselines-20ep/baseline-v2-seed0.pt \
        --cell docs/results/fair20-s0.json --out docs/results/search-cost
    uv run python benchmarks/search_cost.py --smoke --work /tmp/search-cost     # seconds, digits (test suite)

Torch threads are pinned to 1 per process: torch's default of 2 is several times slower on the 2-core
machine. Timings need an otherwise idle machine (docs/BENCHMARKS.md says whether it was).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import job_config, prepare_data  # noqa: E402

H200_TRAIN_IMAGES_S = 1874.0  # docs/BENCHMARKS.md, GPU throughput: ResNet-50 training, batch 64, bf16 (the
# flagship's finetune.amp), one H200
FLAGSHIP = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "resnet50_imagenet.yaml"


def time_job(args: argparse.Namespace, data: dict[str, str], workers: int) -> dict:
    """One searched job on ``workers`` Ray workers (0: this process); its search seconds and candidates."""
    from singe_dist.launch import launch_job

    out = Path(tempfile.mkdtemp(dir=args.work, prefix=f"search-cost-{workers}-"))
    extra = [f"model.checkpoint={args.checkpoint}", "prune.allocation=search", f"prune.remove_fraction={args.fraction}",
             f"prune.steps={args.steps}", f"prune.search_candidates={args.candidates}", "finetune.iters_per_step=2",
             "finetune.final_iters=2", "run.eval_after_prune=false", f"distributed.num_workers={workers}",
             "distributed.cpus_per_worker=1", "distributed.torch_threads=1"]
    config = job_config(args, data, 0, out, extra)
    report = launch_job(config, log=lambda _m: None, local_cpus=max(workers, 1))
    search_s = report["wall_time_s"]["search"]
    scored = args.steps * args.candidates
    return {"workers": max(workers, 1), "search_s": search_s, "candidates": scored,
            "candidates_per_s": scored / search_s, "job_s": report["wall_time_s"]["total"]}


def bookkeeping(arch: str, size: int, classes: int, repeats: int, policy) -> dict:  # noqa: ANN001 (Policy)
    """One candidate without its forward batches: copy, channel selection and surgery, seconds (median)."""
    import dataclasses

    from singe_dist.models import build_model
    from singe_dist.plan.cost import CostModel
    from singe_dist.engine.search import prune_candidate
    from singe_dist.plan.select import candidate_weights
    from singe_dist.relevance.criteria import score
    from singe_dist.relevance.criterion_config import CriterionConfig
    from singe_dist.relevance.groups import example_input, find_groups
    from singe_dist.relevance.registry import make_criterion

    torch.manual_seed(0)
    model = build_model(arch, classes).eval()
    shape = (3, size, size)
    groups = find_groups(model, example_input(model, shape))
    scores = score(make_criterion(CriterionConfig(name="magnitude")), model, groups, None)
    target = CostModel(model, groups, shape).macs * 0.95  # the flagship's first step: 5% of the MACs
    policy = dataclasses.replace(policy, allocation="uniform", original_sizes={g.id: int(g.size) for g in groups})
    times = []
    for w in candidate_weights([g.id for g in groups], repeats + 1, 0.5, 0)[1:]:
        t0 = time.perf_counter()  # engine/search.py's candidate, less its forward batches
        prune_candidate(model, groups, scores, shape, target, dataclasses.replace(policy, group_weights=w), [])
        times.append(time.perf_counter() - t0)
    copy_t0 = time.perf_counter()
    copy.deepcopy(model)
    return {"arch": arch, "bookkeeping_s": statistics.median(times), "copy_s": time.perf_counter() - copy_t0,
            "groups": len(groups)}


def flagship_estimate(book: dict, flagship) -> dict:  # noqa: ANN001 (JobConfig)
    """The flagship job's search, per step and in all, from the measured parts (module docstring). Fine-tuning
    distils (a teacher forward, a third of a pass, per batch); a candidate's forward batches are a third each."""
    p, ft, d = flagship.prune, flagship.finetune, flagship.data
    gpus = flagship.distributed.num_workers
    forward_s = (p.bn_batches + p.search_batches) * d.batch_size / (3 * H200_TRAIN_IMAGES_S)
    per_gpu = -(-p.search_candidates // gpus)  # candidates a GPU scores per step
    search_step_s = per_gpu * (book["bookkeeping_s"] + forward_s)
    from singe_dist.config import DISTILL_WEIGHT

    weight = ft.distill_weight if ft.distill_weight is not None else (DISTILL_WEIGHT if flagship.model.checkpoint else 0)
    distill = 1 + (weight > 0) / 3
    finetune_step_s = ft.iters_per_step * d.batch_size * distill / H200_TRAIN_IMAGES_S
    final_s = ft.final_epochs * d.train_samples * distill / (gpus * H200_TRAIN_IMAGES_S)
    job_s = p.steps * finetune_step_s + final_s
    return {"gpus": gpus, "steps": p.steps, "candidates": p.search_candidates, "bn_batches": p.bn_batches,
            "search_batches": p.search_batches, "forward_s": forward_s, "per_gpu": per_gpu,
            "search_step_s": search_step_s, "finetune_step_s": finetune_step_s, "job_s": job_s,
            "share": p.steps * search_step_s / (job_s + p.steps * search_step_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="shards (the fair fight's folder) and job folders")
    parser.add_argument("--checkpoint", type=Path, help="the baseline to prune (the fair fight's seed 0)")
    parser.add_argument("--cell", type=Path, help="a fair-fight store: its seed-0 default long cell is the job compared")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.7)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="0: in this process")
    parser.add_argument("--out", type=Path, help="OUT.json and OUT.md")
    parser.add_argument("--smoke", action="store_true", help="digits, in this process, ResNet-20 bookkeeping")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    args.dataset, args.source, args.size, args.batch_size = "fashion", "/usr/share/datasets/fashion-mnist", 16, 128
    args.path_points, args.calibration_batches, args.device, args.train_iters = 4, 2, "cpu", 1
    if args.smoke:
        args.dataset, args.batch_size, args.workers, args.candidates, args.steps = "digits", 32, [0], 3, 1
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args)
    if args.checkpoint is None:
        if not args.smoke:
            parser.error("--checkpoint is needed (the baseline to prune)")
        from singe_dist.engine.baseline import train_baseline

        args.checkpoint = args.work / "baseline.pt"
        train_baseline(job_config(args, data, 0, args.work / "unused", ["model.checkpoint=null", "train.iters=20"]),
                       args.checkpoint, log=lambda _m: None)
    jobs = [time_job(args, data, w) for w in args.workers]
    from singe_dist.config import load_config

    config = job_config(args, data, 0, args.work / "unused", [])
    flagship = load_config(FLAGSHIP, ["prune.allocation=search"])
    book = bookkeeping("cifar_resnet20" if args.smoke else flagship.model.arch, 28 if args.smoke else 224,
                       10 if args.smoke else flagship.model.num_classes, 3, flagship.prune.policy())
    estimate = flagship_estimate(book, flagship)
    lines = ["| workers | candidates scored | search s | candidates/s |", "|---|---|---|---|"]
    lines += [f"| {j['workers']} | {j['candidates']} | {j['search_s']:.1f} | {j['candidates_per_s']:.2f} |" for j in jobs]
    text = ["ResNet-20, Fashion-MNIST shards, 3 steps to 70% of MACs, " if not args.smoke else "smoke, digits: ",
            f"{args.candidates} candidates a step, {config.prune.bn_batches} BatchNorm + {config.prune.search_batches} "
            f"scoring batches of {args.batch_size}\n\n" + "\n".join(lines) + "\n"]
    if args.cell:
        cell = next((c for c in json.loads(args.cell.read_text())["cells"]
                     if c["seed"] == 0 and c["recipe"] == "default" and c["budget"] == "long" and c["target"] == 0.7), None)
        if cell is None:
            raise SystemExit(f"search_cost.py: {args.cell} has no seed-0 default cell at 70%, long budget")
        one = jobs[0]["search_s"]
        text.append(f"\nShare of a job: the search's {one:.1f} s (1 worker, {args.steps} steps) beside the fair fight's "
                    f"default cell at 70%, long budget ({cell['seconds']:.0f} s): {one / (one + cell['seconds']):.1%}\n")
    text.append(f"\n{book['arch']}: one candidate's bookkeeping (copy, selection, surgery) {book['bookkeeping_s']:.2f} s "
                f"on this CPU (the copy alone {book['copy_s']:.2f} s), {book['groups']} groups\n")
    if not args.smoke:
        e = estimate
        text.append(f"Flagship estimate ({FLAGSHIP.name} with allocation=search: {e['gpus']} GPUs at H200's measured "
                    f"{H200_TRAIN_IMAGES_S:.0f} training images/s, {e['candidates']} candidates, {e['steps']} steps, "
                    f"{e['bn_batches']} + {e['search_batches']} forward batches each): {e['forward_s']:.3f} s of forward "
                    f"batches a candidate, {e['per_gpu']} candidate(s) a GPU a step, so {e['search_step_s']:.2f} s of "
                    f"search a step against {e['finetune_step_s']:.0f} s of distilled fine-tuning; "
                    f"{e['share']:.2%} of the job's {e['job_s'] / 60:.0f} min\n")
    print("".join(text))
    if args.out:
        from singe_dist.atomic import atomic_write_text

        atomic_write_text(args.out.with_suffix(".json"), json.dumps({"jobs": jobs, "bookkeeping": book,
                                                                     "flagship": estimate}, indent=1))
        atomic_write_text(args.out.with_suffix(".md"), "".join(text))


if __name__ == "__main__":
    main()
