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


# flag -> (CriterionConfig field, what it sets); a flag left out takes the config's criterion section
# (--config/--set), else the CriterionConfig default. Choices and defaults come from relevance/criterion_config.py.
_CRITERION_FLAGS = {
    "criterion": ("name", "{builtin}, or your own as package.module:Class; with --config/--set, the config's "
                  "criterion.name; default"),
    "path": ("path", "SInGE removal path"),
    "steps": ("steps", "SInGE quadrature points S"),
    "rule": ("rule", ""),
    "reduce": ("reduce", ""),
    "loss": ("loss", "cross-entropy or KL to the unpruned model"),
    "norm": ("norm", "magnitude: L1 or L2"),
    "seed": ("seed", "random criterion seed"),
    "max_rows": ("max_rows", "rows (samples x path points) per pass"),
}


def _add_criterion_args(p: argparse.ArgumentParser) -> None:
    from singe_dist.relevance.criterion_config import CHOICES, DEFAULTS

    g = p.add_argument_group("criterion (default: the config's criterion section, else the values shown)")
    from singe_dist.relevance.registry import BUILTIN

    for flag, (name, what) in _CRITERION_FLAGS.items():
        what = what.format(builtin=", ".join(BUILTIN))
        default = DEFAULTS[name]
        choices = list(CHOICES[name]) if name in CHOICES else None
        kind = type(default) if isinstance(default, int) else None
        g.add_argument(f"--{flag.replace('_', '-')}", dest=flag, default=None, choices=choices, type=kind,
                       help=f"{what} ({default})".lstrip())


def _criterion(args: argparse.Namespace, base=None):  # noqa: ANN001, ANN202
    import dataclasses

    from singe_dist.relevance.criterion_config import CriterionConfig

    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(CriterionConfig)} if base is not None else {}
    values.update({name: getattr(args, flag) for flag, (name, _what) in _CRITERION_FLAGS.items()
                   if getattr(args, flag) is not None})
    return CriterionConfig(**values)


def cmd_relevance(args: argparse.Namespace) -> int:
    """Score every channel of every group and write them, with module names, as JSON."""
    import torch

    from singe_dist.atomic import atomic_write_text
    from singe_dist.plan.removal_check import check_removal
    from singe_dist.relevance.criteria import score
    from singe_dist.relevance.groups import example_input, find_groups
    from singe_dist.relevance.registry import make_criterion

    job = _job_config(args) if (args.config or args.set) else None  # the job's model, shards and criterion
    if args.samples is not None and args.samples <= 0:
        raise SingeError(f"--samples must be > 0, got {args.samples}")
    config = _criterion(args, job.criterion if job else None)
    criterion = make_criterion(config)
    model, arch, num_classes, size, checkpoint = _relevance_model(args, job)
    ignored = [*(job.model.ignored_layers if job else []), *args.ignore]
    groups = find_groups(model, example_input(model, (3, size, size)), ignored)
    t0 = time.perf_counter()
    batches, skipped = _relevance_batches(args, job, size, num_classes) if criterion.needs_data else (None, None)
    probe = batches[0][0] if batches else torch.randn(4, 3, size, size)  # the property holds for any input
    print(check_removal(model, groups, probe, (3, size, size)).line())
    scores = score(criterion, model, groups, batches)
    result = {
        "model": arch, "num_classes": num_classes, "checkpoint": str(checkpoint) if checkpoint else None,
        "criterion": config.__dict__, "samples": sum(len(b[1]) for b in batches) if batches else 0,
        "data": (job.data.train if job else args.data) if criterion.needs_data else None, "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
        "groups": {g.id: {"channels": g.size, "members": sorted({m.name for m in g.members}),
                          "consumers": sorted({m.name for m in g.consumers}),
                          "scores": [float(v) for v in scores[g.id].to(torch.float64)]} for g in groups},
    }
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"wrote relevance of {sum(g.size for g in groups)} channels in {len(groups)} groups to {args.out}")
    return 0


def _relevance_model(args: argparse.Namespace, job):  # noqa: ANN001, ANN202
    """The model ``relevance`` scores: the flags', else the job's; and its image size and checkpoint."""
    from singe_dist.checkpoint import load_model

    checkpoint = args.checkpoint or (job.model.checkpoint if job else None)
    if job is None:
        if args.data != "digits":
            raise SingeError(f"unknown data {args.data!r}: use 'digits', or --config/--set with data.train shards")
        model, arch, num_classes, _plan = load_model(args.checkpoint, args.model, args.num_classes)
        return model, arch, num_classes, args.image_size or 32, checkpoint
    size = job.data.image_size
    if args.image_size is not None and args.image_size != size:
        raise SingeError(f"--image-size {args.image_size} differs from the config's data.image_size {size}: "
                         "set data.image_size instead")
    model, arch, num_classes, _plan = load_model(checkpoint, args.model or job.model.arch,
                                                 args.num_classes or job.model.num_classes)
    return model, arch, num_classes, size, checkpoint


def _relevance_batches(args: argparse.Namespace, job, size: int, num_classes: int):  # noqa: ANN001, ANN202
    """Calibration batches and the count of damaged input skipped (None for the bundled digits): fresh
    un-augmented batches of the job's training shards, as a pruning step reads them."""
    if job is None:
        from singe_dist.data.digits import digits_tensors
        from singe_dist.engine.train import tensor_batches

        x, y = digits_tensors("train", size)
        return list(tensor_batches(x[: args.samples or 256], y[: args.samples or 256], args.batch_size or 64)), None
    import math

    from singe_dist.data.streams import DataStreams

    job.data.batch_size = args.batch_size or job.data.batch_size
    count = math.ceil(args.samples / job.data.batch_size) if args.samples else job.criterion.calibration_batches
    streams = DataStreams(job.data, num_classes, seed=job.run.seed)
    batches = streams.calibration(0, count)
    skipped = streams.skipped()  # as a pruning job counts them: a truncated shard is read up to its break
    print(f"data: {skipped} corrupt sample(s) or broken shard(s) skipped")
    return (_first_samples(batches, args.samples) if args.samples else batches), skipped


def _first_samples(batches: list, count: int) -> list:
    """The first ``count`` samples of a list of (x, y) batches."""
    kept, left = [], count
    for x, y in batches:
        if left <= 0:
            break
        kept.append((x[:left], y[:left]))
        left -= len(y)
    return kept


def _job_config(args: argparse.Namespace):  # noqa: ANN202
    from singe_dist.config import load_config

    return load_config(args.config, args.set)


def cmd_prune(args: argparse.Namespace) -> int:
    """The main job in one process (Ray launches the same loop on every worker)."""
    config = _job_config(args).check_job()  # validate before the heavy imports: a typo fails in a second
    args.run_dir = config.run.out_dir  # for the line an interrupted run prints (main)
    from singe_dist.launch import launch_job, tracking_hint
    from singe_dist.preflight import check_job_inputs

    check_job_inputs(config, args.resume)  # every input before the MLflow store, run directory or Ray exist
    report = launch_job(config, resume=args.resume)
    hint = tracking_hint(config, report)
    if hint:
        print(f"MLflow: {hint}")
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


def cmd_export(args: argparse.Namespace) -> int:
    """Write a checkpoint's model as ONNX (dynamic batch), kept only if ONNX Runtime matches PyTorch."""
    from singe_dist.export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.onnx, args.image_size).summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from singe_dist.demo import demo_config, run_demo

    overrides = ["run.overwrite=true", *args.set]
    args.run_dir = demo_config(overrides).run.out_dir  # for the line an interrupted demo prints (main)
    run_demo(overrides)
    return 0


def cmd_models(_args: argparse.Namespace) -> int:
    from singe_dist.models import available_models

    print("\n".join(available_models()))
    return 0


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML job config (defaults for every missing key)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set prune.remove_fraction=0.3 (repeatable)")


def _add_relevance(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = sub.add_parser("relevance", help="score every channel (per group) and write JSON")
    p.add_argument("--model", default=None, help="architecture name (see `singe-dist models`)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--checkpoint", default=None, help="checkpoint or state dict (loaded with weights_only=True); "
                   "with --config/--set: default model.checkpoint")
    p.add_argument("--data", default="digits", help="calibration data without --config/--set: 'digits' (with "
                   "--config/--set: the job's data.train shards)")
    p.add_argument("--image-size", type=int, default=None, help="digits only (32); a config's data.image_size")
    p.add_argument("--samples", type=int, default=None, help="calibration samples (digits: 256; a config: "
                   "criterion.calibration_batches x data.batch_size)")
    p.add_argument("--batch-size", type=int, default=None, help="(digits: 64; a config: data.batch_size)")
    p.add_argument("--ignore", action="append", default=[], help="module whose output channels stay (repeatable)")
    p.add_argument("--out", default="relevance.json")
    _job_args(p)
    _add_criterion_args(p)
    p.set_defaults(func=cmd_relevance)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="singe-dist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_relevance(sub)

    from singe_dist.relevance.registry import BUILTIN, DEFAULT

    *others, last = [c for c in BUILTIN if c != DEFAULT]
    p = sub.add_parser("prune", help=f"the main job: entwined pruning and fine-tuning (criterion.name: {DEFAULT} "
                       f"by default, {', '.join(others)}, {last} or your own package.module:Class)")
    _job_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in run.out_dir from its last checkpoint")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("train", help="train a baseline model from shards")
    _job_args(p)
    p.add_argument("--out", required=True, help="checkpoint to write (fresh weights, or trained on from "
                   "model.checkpoint when that names another file)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a (pruned) checkpoint on the config's validation shards")
    _job_args(p)
    p.add_argument("--checkpoint", required=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a (pruned) checkpoint as ONNX, verified through ONNX Runtime")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the plan's input size)")
    p.set_defaults(func=cmd_export)

    from singe_dist.data.shards_cli import register as register_shards

    register_shards(sub)

    p = sub.add_parser("demo", help="the embedded-default demo on the bundled digits data")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of jobs/configs/demo.yaml (repeatable)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("models", help="list the architecture names")
    p.set_defaults(func=cmd_models)
    return parser


def _resume_command(argv: Sequence[str]) -> str:
    """The command line that continues this run: how it was started, plus ``--resume``."""
    import shlex

    words = [w for w in argv if w != "--resume"]
    if Path(sys.argv[0]).name == "prune.py" and words[:1] == ["prune"]:  # jobs/prune.py on a cluster
        return shlex.join(["python", "jobs/prune.py", *words[1:]])
    if words[:1] == ["demo"]:  # the demo's job is a prune run of jobs/configs/demo.yaml
        sets = [w for i, w in enumerate(words) if i and (w.startswith("--set") or words[i - 1] == "--set")]
        return shlex.join(["singe-dist", "prune", "--config", "jobs/configs/demo.yaml", *sets])
    return shlex.join(["singe-dist", *words])


def main(argv: Sequence[str] | None = None) -> int:
    from singe_dist.engine.run_dir import resume_hint
    from singe_dist.interrupt import Interrupted, interruptible

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # SIGINT and SIGTERM: the job's clean-up runs, then one line below; while it is printed, a further
    # signal is ignored (an Interrupted is being handled), not a traceback
    with interruptible():
        try:
            return int(args.func(args) or 0)
        except SingeError as exc:
            print(f"singe-dist {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else 2
            name = exc.name if isinstance(exc, Interrupted) else "SIGINT"
            run_dir = getattr(args, "run_dir", None)
            hint = f": {resume_hint(run_dir, _resume_command(argv))}" if run_dir else ""
            print(f"singe-dist {args.command}: stopped by {name}{hint}", file=sys.stderr, flush=True)
            return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
