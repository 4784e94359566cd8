"""Bad input: each mistake is a SingeError with one line that names what is wrong."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from singe_dist.checkpoint import load_model, save_checkpoint
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.plan.decide import Budget
from singe_dist.plan.plan import Plan, apply_plan
from singe_dist.relevance.criteria import CriterionConfig, compute_relevance
from singe_dist.relevance.groups import example_input, find_groups

from .support import as_sets


def _one_line(exc: pytest.ExceptionInfo, *words: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and text
    for w in words:
        assert w in text, (w, text)


def test_unknown_model_name() -> None:
    with pytest.raises(SingeError) as exc:
        build_model("resnet19", 10)
    _one_line(exc, "unknown model name", "resnet19")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_budget_outside_open_unit_interval(fraction: float) -> None:
    with pytest.raises(SingeError) as exc:
        Budget("macs", fraction)
    _one_line(exc, "budget fraction", "(0, 1)")


def test_empty_calibration_data() -> None:
    model = build_model("digits_resnet", 10)
    groups = find_groups(model, example_input(model, (3, 16, 16)))
    with pytest.raises(SingeError) as exc:
        compute_relevance(model, groups, [], CriterionConfig(name="singe"))
    _one_line(exc, "calibration data is empty")


def test_non_finite_loss() -> None:
    model = build_model("digits_resnet", 10)
    groups = find_groups(model, example_input(model, (3, 16, 16)))
    x = torch.full((4, 3, 16, 16), float("nan"))
    with pytest.raises(SingeError) as exc:
        compute_relevance(model, groups, [(x, torch.zeros(4, dtype=torch.long))], CriterionConfig(name="taylor"))
    _one_line(exc, "non-finite loss")


def test_checkpoint_with_mismatched_shapes(tmp_path) -> None:
    model = build_model("digits_resnet", 10)
    state = model.state_dict()
    state["fc.weight"] = torch.zeros(10, 99)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(SingeError) as exc:
        load_model(tmp_path / "bad.pt", "digits_resnet", 10)
    _one_line(exc, "fc.weight", "(10, 99)", "(10, 64)")


def test_checkpoint_that_would_execute_code_is_refused(tmp_path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SingeError) as exc:
        load_model(tmp_path / "evil.pt", "digits_resnet", 10)
    _one_line(exc, "cannot be loaded safely")


def test_plan_naming_modules_the_model_lacks(tmp_path) -> None:
    plan = Plan("digits_resnet", 10, (3, 16, 16), [{"layers.7.conv1": [0, 1]}])
    with pytest.raises(SingeError) as exc:
        apply_plan(build_model("digits_resnet", 10), plan)
    _one_line(exc, "layers.7.conv1")
    model = build_model("digits_resnet", 10)
    save_checkpoint(tmp_path / "ck.pt", model, "digits_resnet", 10, plan)
    with pytest.raises(SingeError) as exc:
        load_model(tmp_path / "ck.pt")
    _one_line(exc, "layers.7.conv1")


def test_plan_file_that_is_not_a_plan(tmp_path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"steps": []}))
    with pytest.raises(SingeError) as exc:
        Plan.load(tmp_path / "p.json")
    _one_line(exc, "not a singe-dist plan")


def test_cli_prints_one_line_and_exits_2(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "singe_dist.cli", "relevance", "--model", "resnet19", "--num-classes", "10",
         "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown model name 'resnet19'" in proc.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("overrides", "words"), [
    (["criterion.split=channels"], ["criterion.split=channels needs criterion.path=channel"]),
    (["criterion.replan=1", "criterion.name=taylor"], ["replan", "needs name=singe"]),
    (["criterion.name=singe", "criterion.replan=1", "criterion.reduce=norm"], ["replan", "reduce=norm"]),
    (["criterion.loss=output"], ["loss=output", "needs reduce=norm"]),
])
def test_rules_across_config_keys_refuse_when_the_config_loads(overrides: list[str], words: list[str]) -> None:
    from singe_dist.config import load_config

    with pytest.raises(SingeError) as exc:
        load_config(None, overrides)
    _one_line(exc, *words)
    load_config(None, ["criterion.split=channels", "criterion.path=channel"])  # the rule, not the key, refuses


@pytest.mark.parametrize(("overrides", "words"), [
    (["finetune.final_epochs=1"], ["finetune.final_epochs needs data.train_samples"]),
    (["finetune.distill_weight=0.5", "finetune.final_iters=1"], ["finetune.distill_weight > 0 needs model.checkpoint"]),
])
def test_rules_a_pruning_job_adds_refuse_before_it_starts(overrides: list[str], words: list[str]) -> None:
    from singe_dist.config import load_config

    config = load_config(None, overrides)  # train and eval ignore these keys: the config itself loads
    with pytest.raises(SingeError) as exc:
        config.check_job()
    _one_line(exc, *words)
    load_config(None, [*overrides, "data.train_samples=100", "model.checkpoint=b.pt"]).check_job()


@pytest.mark.parametrize("rule", [["criterion.split=channels"], ["finetune.distill_weight=0.5"]])
def test_a_ray_job_breaking_a_rule_across_keys_refuses_before_ray_starts(tmp_path, rule: list[str]) -> None:
    run_dir = tmp_path / "run"
    sets = as_sets(["distributed.num_workers=2", f"run.out_dir={run_dir}", *rule])
    proc = subprocess.run([sys.executable, "-c", "import sys; from singe_dist.cli import main; code = main(); "
                           "assert 'ray' not in sys.modules, 'Ray was imported'; sys.exit(code)", "prune", *sets],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "singe-dist prune: error: config " in proc.stderr
    assert not run_dir.exists()
