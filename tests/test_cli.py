"""The command line and the demo, run as a user would run them."""

from __future__ import annotations

import json
import re

from singe_dist.checkpoint import load_model, save_checkpoint
from singe_dist.demo import run_demo
from singe_dist.plan.cost import measure
from singe_dist.plan.plan import Plan

from .support import run_cli


def test_relevance_command_writes_scores_per_group_with_module_names(trained_digits_model, tmp_path) -> None:
    save_checkpoint(tmp_path / "base.pt", trained_digits_model, "digits_resnet", 10)
    out = tmp_path / "scores.json"
    proc = run_cli("relevance", "--criterion", "singe", "--checkpoint", str(tmp_path / "base.pt"), "--image-size", "16", "--samples", "64",
                   "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"removal self-check: gate-at-0 equals removal on 4 group\(s\) \(max relative difference "
                     r"\d\.\de-\d\d, \d+\.\ds\)", proc.stdout), proc.stdout
    data = json.loads(out.read_text())
    assert data["model"] == "digits_resnet" and data["samples"] == 64
    groups = data["groups"]
    assert "layers.0.conv1" in groups and "fc" not in groups
    for gid, g in groups.items():
        assert len(g["scores"]) == g["channels"] > 0
        assert gid in g["members"]
        assert all(isinstance(v, float) for v in g["scores"])
    # residual stream: one group spans the stem and every block of the first stage
    stem = groups["conv1"]
    assert {"conv1", "bn1", "layers.0.conv1", "layers.0.conv2"} <= set(stem["members"]) | set(stem["consumers"])


def test_demo_writes_shards_trains_a_baseline_and_prunes_half_the_macs(tmp_path) -> None:
    """The demo's own wiring, in one process and at 16 px (the Ray path is tested in test_ray_job)."""
    data = tmp_path / "data"
    overrides = [
        f"data.train={data}/train-{{000000..000001}}.tar", f"data.val={data}/val-000000.tar",
        "data.image_size=16", "data.resize_size=16", f"model.checkpoint={tmp_path}/baseline.pt",
        f"run.out_dir={tmp_path}/prune", "train.iters=150", "prune.steps=2", "finetune.iters_per_step=10",
        "finetune.final_epochs=0.5", "distributed.num_workers=0", "tracking.enabled=false",
    ]
    lines: list[str] = []
    report = run_demo(overrides, log=lines.append)
    assert (data / "classes.json").is_file() and (tmp_path / "baseline.pt").is_file()
    assert report["baseline"]["top1"] > 0.9
    assert 0.5 <= report["final"]["fraction_removed"] < 0.6
    assert any("| final" in line for line in lines)
    assert sum(line.startswith("removal self-check: gate-at-0 equals removal") for line in lines) == 1  # once, first
    model, *_ = load_model(tmp_path / "prune" / "pruned.pt")
    assert measure(model, (3, 16, 16)).macs == report["final"]["macs"]
    assert Plan.load(tmp_path / "prune" / "plan.json").digest() == report["plan_digest"]


def test_train_writes_the_baseline_its_config_names_and_then_refuses_to_overwrite_it(tmp_path) -> None:
    """The README's `singe-dist train --config jobs/configs/demo.yaml --out runs/demo/baseline.pt`: the config's
    model.checkpoint is that very file, which training must write from fresh weights, not demand first."""
    from singe_dist.data.convert import digits_to_shards

    digits_to_shards(tmp_path / "data", size=16)
    out = tmp_path / "baseline.pt"
    args = ["train", "--config", "jobs/configs/demo.yaml", "--out", str(out), "--set", f"model.checkpoint={out}",
            "--set", f"data.train={tmp_path}/data/train-{{000000..000001}}.tar",
            "--set", f"data.val={tmp_path}/data/val-000000.tar", "--set", "data.image_size=16",
            "--set", "data.resize_size=16", "--set", "train.iters=2", "--set", "tracking.enabled=false"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["iters"] == 2
    again = run_cli(*args)
    assert again.returncode != 0 and f"{out} already exists: pass --overwrite" in again.stderr, again.stderr


def test_the_relevance_flags_take_the_criterions_own_choices_and_defaults() -> None:
    """One definition (relevance/criterion_config.py, the names relevance/registry.py's): the CLI's choices and the
    defaults its help shows are read from it, and the criterion has one default, a job's and the CLI's."""
    from singe_dist.cli import build_parser
    from singe_dist.config import CriterionSection
    from singe_dist.relevance.criterion_config import CHOICES, DEFAULTS, CriterionConfig
    from singe_dist.relevance.registry import BUILTIN, DEFAULT

    relevance = build_parser()._subparsers._group_actions[0].choices["relevance"]  # noqa: SLF001
    flags = {o.dest: o for o in relevance._actions}  # noqa: SLF001
    assert flags["criterion"].choices is None  # a user's own "package.module:Class" is a name too
    assert all(name in flags["criterion"].help for name in BUILTIN) and "package.module:Class" in flags["criterion"].help
    for field in ("path", "rule", "reduce", "loss", "norm"):
        assert tuple(flags[field].choices) == CHOICES[field]
    for dest, field in (("criterion", "name"), ("steps", "steps"), ("seed", "seed"), ("max_rows", "max_rows")):
        assert flags[dest].default is None and f"({DEFAULTS[field]})" in flags[dest].help
    args = build_parser().parse_args(["relevance", "--criterion", "taylor", "--steps", "3", "--norm", "1"])
    assert (args.criterion, args.steps, args.norm) == ("taylor", 3, 1)
    assert CriterionSection.name == CriterionConfig.name == DEFAULTS["name"] == DEFAULT == "magnitude"
    prune_help = [a.help for a in build_parser()._subparsers._group_actions[0]._choices_actions  # noqa: SLF001
                  if a.dest == "prune"][0]
    assert f"criterion.name: {DEFAULT} by default" in prune_help
    assert all(name in prune_help for name in BUILTIN)
