"""The ``singe-dist`` command line: one sub-command per job.

User errors (:class:`SingeError`) print as one line on stderr with exit status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from singe_dist.errors import SingeError


def _add_criterion_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("criterion")
    g.add_argument("--criterion", default="singe", choices=["singe", "taylor", "magnitude", "random"])
    g.add_argument("--path", default="group", choices=["group", "channel"], help="SInGE removal path")
    g.add_argument("--steps", type=int, default=8, help="SInGE quadrature points S")
    g.add_argument("--rule", default="midpoint", choices=["midpoint", "trapezoid"])
    g.add_argument("--reduce", default="signed", choices=["signed", "abs"])
    g.add_argument("--loss", default="ce", choices=["ce", "kl"], help="cross-entropy or KL to the unpruned model")
    g.add_argument("--norm", type=int, default=2, choices=[1, 2], help="magnitude: L1 or L2")
    g.add_argument("--seed", type=int, default=0, help="random criterion seed")
    g.add_argument("--max-rows", type=int, default=256, help="rows (samples x path points) per pass")


def _criterion(args: argparse.Namespace):  # noqa: ANN202
    from singe_dist.relevance.criteria import CriterionConfig

    return CriterionConfig(name=args.criterion, path=args.path, steps=args.steps, rule=args.rule, reduce=args.reduce,
                           loss=args.loss, norm=args.norm, seed=args.seed, max_rows=args.max_rows)


def cmd_relevance(args: argparse.Namespace) -> int:
    """Score every channel of every group and write them, with module names, as JSON."""
    import torch

    from singe_dist.checkpoint import load_model
    from singe_dist.data.digits import digits_tensors
    from singe_dist.engine.train import tensor_batches
    from singe_dist.atomic import atomic_write_text
    from singe_dist.relevance.criteria import compute_relevance
    from singe_dist.relevance.groups import example_input, find_groups

    config = _criterion(args)
    model, arch, num_classes, _plan = load_model(args.checkpoint, args.model, args.num_classes)
    size = args.image_size
    if args.data != "digits":
        raise SingeError(f"unknown data {args.data!r}: use 'digits'")
    x, y = digits_tensors("train", size)
    if args.samples <= 0:
        raise SingeError(f"--samples must be > 0, got {args.samples}")
    x, y = x[: args.samples], y[: args.samples]
    groups = find_groups(model, example_input(model, (3, size, size)), args.ignore)
    t0 = time.perf_counter()
    batches = tensor_batches(x, y, args.batch_size) if config.needs_data else None
    scores = compute_relevance(model, groups, batches, config)
    result = {
        "model": arch,
        "num_classes": num_classes,
        "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        "criterion": config.__dict__,
        "samples": len(x) if config.needs_data else 0,
        "seconds": round(time.perf_counter() - t0, 3),
        "groups": {
            g.id: {
                "channels": g.size,
                "members": sorted({m.name for m in g.members}),
                "consumers": sorted({m.name for m in g.consumers}),
                "scores": [float(v) for v in scores[g.id].to(torch.float64)],
            }
            for g in groups
        },
    }
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote relevance of {sum(g.size for g in groups)} channels in {len(groups)} groups to {args.out}")
    return 0


def _job_config(args: argparse.Namespace):  # noqa: ANN202
    from singe_dist.config import load_config

    return load_config(args.config, args.set)


def cmd_prune(args: argparse.Namespace) -> int:
    """The main job in one process (Ray launches the same loop on every worker)."""
    config = _job_config(args)  # validate before the heavy imports: a typo fails in a second
    from singe_dist.tracking.mlflow_tracker import make_tracker, ui_hint

    if config.distributed.num_workers == 0:
        from singe_dist.engine.loop import PruneJob

        tracker = make_tracker(config)  # an unreachable tracking server fails here, before any work
        report = PruneJob(config, tracker=tracker, resume=args.resume).run()
    else:
        from singe_dist.distributed.ray_launcher import run_on_ray
        from singe_dist.engine.loop import summary_table

        report = run_on_ray(config, resume=args.resume)
        print(summary_table(report))
    if config.tracking.enabled:
        lost = " (incomplete: tracking was lost mid-run, see tracking_lost in report.json)" \
            if report.get("tracking_lost") else ""
        print(f"MLflow: {ui_hint(config)}{lost}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from singe_dist.engine.baseline import train_baseline

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SingeError(f"{out} already exists: pass --overwrite to replace it")
    train_baseline(_job_config(args), out)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a (pruned) checkpoint on the validation shards of a config."""
    from singe_dist.checkpoint import load_model
    from singe_dist.data.streams import DataStreams
    from singe_dist.engine.train import evaluate
    from singe_dist.plan.cost import measure

    config = _job_config(args)
    model, arch, num_classes, plan = load_model(args.checkpoint)
    size = config.data.image_size
    result = evaluate(model, DataStreams(config.data, num_classes, seed=config.run.seed, training=False).val()).as_dict()
    fp = measure(model, (3, size, size))
    out = {"checkpoint": args.checkpoint, "arch": arch, "plan_steps": len(plan.steps) if plan else 0,
           **result, "macs": fp.macs, "params": fp.params}
    print(json.dumps(out, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from singe_dist.demo import run_demo

    run_demo(["run.overwrite=true", *args.set])
    return 0


def cmd_models(_args: argparse.Namespace) -> int:
    from singe_dist.models import available_models

    print("\n".join(available_models()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="singe-dist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("relevance", help="score every channel (per group) and write JSON")
    p.add_argument("--model", default=None, help="architecture name (see `singe-dist models`)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--checkpoint", default=None, help="checkpoint or state dict (loaded with weights_only=True)")
    p.add_argument("--data", default="digits", help="calibration data: 'digits'")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--samples", type=int, default=256, help="calibration samples")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ignore", action="append", default=[], help="module whose output channels stay (repeatable)")
    p.add_argument("--out", default="relevance.json")
    _add_criterion_args(p)
    p.set_defaults(func=cmd_relevance)

    def job_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, help="YAML job config (defaults for every missing key)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set prune.remove_fraction=0.3 (repeatable)")

    p = sub.add_parser("prune", help="the main job: entwined SInGE pruning and fine-tuning")
    job_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in run.out_dir from its last checkpoint")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("train", help="train a baseline model from shards")
    job_args(p)
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a (pruned) checkpoint on the config's validation shards")
    job_args(p)
    p.add_argument("--checkpoint", required=True)
    p.set_defaults(func=cmd_eval)

    from singe_dist.data.cli import register as register_shards

    register_shards(sub)

    p = sub.add_parser("demo", help="the embedded-default demo on the bundled digits data")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of jobs/configs/demo.yaml (repeatable)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the architecture names")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SingeError as exc:
        print(f"singe-dist {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
