"""Property 5 and the selection rules: plans replay exactly; budgets are met within one channel."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from singe_dist.checkpoint import load_model, save_checkpoint
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.plan.cost import CostModel, measure
from singe_dist.plan.decide import Budget, decide_and_remove, prune_one_shot
from singe_dist.plan.plan import Plan, apply_plan, replay
from singe_dist.plan.select import Constraints, Policy, select_channels
from singe_dist.relevance.criteria import CriterionConfig, compute_relevance
from singe_dist.relevance.groups import example_input, find_groups

from .support import DIGITS_SIZE, pruned_widths

INPUT = (3, DIGITS_SIZE, DIGITS_SIZE)


def test_plan_json_round_trip_and_replay_give_identical_outputs(trained_digits_model, digits_data, tmp_path) -> None:
    model = trained_digits_model
    x, y = digits_data["train"][0][:64], digits_data["train"][1][:64]
    plan, _ = prune_one_shot(model, "digits_resnet", 10, INPUT, [(x, y)], CriterionConfig(name="singe", steps=2), Budget("macs", 0.4))
    # a second step on the already pruned model: indices refer to the model at that time
    groups = find_groups(model, example_input(model, INPUT))
    scores = compute_relevance(model, groups, None, CriterionConfig(name="magnitude"))
    target = measure(model, INPUT).macs * 0.8
    sel = decide_and_remove(model, groups, scores, INPUT, target)
    plan.steps.append(sel.channels)

    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded == Plan.from_json(plan.to_json())
    assert loaded.digest() == plan.digest()

    rebuilt = replay(loaded)
    assert pruned_widths(rebuilt) == pruned_widths(model)
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))

    save_checkpoint(tmp_path / "pruned.pt", model, "digits_resnet", 10, loaded)
    again, arch, classes, ck_plan = load_model(tmp_path / "pruned.pt")
    assert (arch, classes, ck_plan.digest()) == ("digits_resnet", 10, plan.digest())
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))


@pytest.mark.parametrize("arch,size", [("resnet18", 32), ("mobilenet_v2", 32), ("vgg11_bn", 32), ("resnet50", 32)])
@pytest.mark.parametrize("metric", ["macs", "params"])
def test_budget_met_within_one_channel_and_cost_model_is_exact(arch: str, size: int, metric: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    input_size = (3, size, size)
    groups = find_groups(model, example_input(model, input_size))
    scores = compute_relevance(model, groups, None, CriterionConfig(name="random", seed=1))
    original = measure(model, input_size)
    budget = Budget(metric, 0.5)
    selection = decide_and_remove(model, groups, scores, input_size, budget.target(original),
                                  Policy(metric, allocation="global"))
    after = measure(model, input_size)
    assert (selection.macs, selection.params) == (after.macs, after.params)  # prediction == measurement
    target = budget.target(original)
    assert after.get(metric) <= target
    assert target - after.get(metric) < selection.last_unit_cost  # overshoot below one channel's cost


def test_cost_model_predicts_every_removal_exactly() -> None:
    model = build_model("mobilenet_v2", 10).eval()
    input_size = (3, 32, 32)
    groups = find_groups(model, example_input(model, input_size))
    cost = CostModel(model, groups, input_size)
    step = {}
    for g in groups[::4]:
        cost.remove(g.id, 3)
        step[g.id] = [0, 1, 2]
    pruned = copy.deepcopy(model)
    apply_plan(pruned, Plan("mobilenet_v2", 10, input_size, [step]))
    assert cost.footprint() == measure(pruned, input_size)


def test_rounding_minimum_keep_and_ignored_layers() -> None:
    model = build_model("resnet18", 10).eval()
    input_size = (3, 32, 32)
    groups = find_groups(model, example_input(model, input_size), ignored_layers=["layer1.0.conv1"])
    assert "layer1.0.conv1" not in {g.id for g in groups}
    assert "fc" not in {g.id for g in groups}  # the classifier output is always kept
    sizes = {g.id: g.size for g in groups}
    scores = compute_relevance(model, groups, None, CriterionConfig(name="random"))
    constraints = Constraints(min_keep_fraction=0.25, min_keep=12, round_to=8)
    original = measure(model, input_size)
    sel = decide_and_remove(model, groups, scores, input_size, original.macs * 0.3,
                           Policy(constraints=constraints, allocation="global"))
    widths = pruned_widths(model)
    for gid, size in sizes.items():
        kept = widths[gid]
        assert kept % 8 == 0, (gid, kept)
        assert kept >= max(12, math.ceil(0.25 * size)), (gid, kept)
    assert sel.channels


def test_ties_are_broken_deterministically() -> None:
    model = build_model("digits_resnet", 10).eval()
    groups = find_groups(model, example_input(model, INPUT))
    flat = {g.id: torch.zeros(g.size, dtype=torch.float64) for g in groups}  # every channel ties
    picks = []
    for order in (groups, list(reversed(groups))):
        cost = CostModel(model, order, INPUT)
        scores = {g.id: flat[g.id] for g in order}
        picks.append(select_channels(scores, cost, cost.base.macs * 0.7, Policy(allocation="global")).channels)
    assert picks[0] == picks[1]
    first_group = sorted(flat)[0]
    assert picks[0][first_group][:3] == [0, 1, 2]  # group id, then channel index


def test_cost_normalised_ranking_prefers_expensive_channels() -> None:
    model = build_model("digits_resnet", 10).eval()
    groups = find_groups(model, example_input(model, INPUT))
    scores = {g.id: torch.ones(g.size, dtype=torch.float64) for g in groups}
    costs = CostModel(model, groups, INPUT).channel_costs()
    cheapest_macs = min(costs, key=lambda gid: costs[gid][0])
    sel = select_channels(scores, CostModel(model, groups, INPUT), measure(model, INPUT).macs * 0.95,
                          Policy(allocation="global", normalize_by_cost=True))
    assert cheapest_macs not in sel.channels
    assert max(sel.channels, key=lambda gid: len(sel.channels[gid])) == max(costs, key=lambda gid: costs[gid][0])


def test_a_selection_policy_is_checked_once_and_must_count_what_the_budget_counts() -> None:
    with pytest.raises(SingeError, match="allocation must be one of global, uniform, search, got 'even'"):
        Policy(allocation="even")
    with pytest.raises(SingeError, match="metric"):
        Policy(metric="flops")
    # uniform takes the same fraction from every group: cost normalisation would silently do nothing
    with pytest.raises(SingeError, match="normalize_by_cost needs allocation=global: 'uniform'"):
        Policy(normalize_by_cost=True)
    model = build_model("digits_resnet", 10).eval()
    with pytest.raises(SingeError, match="policy counts params but the budget counts macs"):
        prune_one_shot(model, "digits_resnet", 10, INPUT, None, CriterionConfig(name="magnitude"), Budget("macs", 0.3),
                       Policy(metric="params"))


def test_the_api_and_the_job_share_one_default_allocation() -> None:
    """The evidence-chosen default (uniform) holds for `prune_one_shot` users as for jobs: one constant."""
    import dataclasses

    from singe_dist.config import PruneConfig, load_config

    assert Policy().allocation == PruneConfig().allocation == load_config(None, []).prune.allocation == "uniform"
    assert {f.name: f.default for f in dataclasses.fields(Policy)}["allocation"] == "uniform"
    with pytest.raises(SingeError, match="config prune.normalize_by_cost needs config prune.allocation=global"):
        load_config(None, ["prune.normalize_by_cost=true"])
    assert load_config(None, ["prune.normalize_by_cost=true", "prune.allocation=global"]).prune.normalize_by_cost


def test_a_configs_prune_section_becomes_the_policy_a_job_plans_with() -> None:
    """`PruneConfig.policy`, the one place a config becomes a Policy (the job and the benchmark use it)."""
    from singe_dist.config import load_config

    keys = ["prune.allocation=global", "prune.max_remove_fraction=0.75", "prune.normalize_by_cost=true",
            "prune.metric=params", "prune.min_keep_fraction=0.2", "prune.min_keep=3", "prune.round_to=4"]
    policy = load_config(None, keys).prune.policy({"g": 16})
    assert policy == Policy("params", Constraints(0.2, 3, 4, 0.75), "global", True, {"g": 16})


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch) -> None:
    """The README's "Python API" block, run as written but for a smaller model and input (ResNet-50 at
    224 px would take minutes here): the imports, the calls' signatures and the two-line load hold."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S)
    assert block, "README has no Python API block"
    code = block.group(1)
    small = code.replace('"resnet50"', '"resnet18"').replace("(3, 224, 224)", "(3, 64, 64)")
    assert small.count('"resnet18"') == 3 and "(3, 64, 64)" in small  # the swap hit what it must
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = {"calibration_batches": [(torch.randn(2, 3, 64, 64), torch.randint(0, 1000, (2,)))]}
    exec(compile(small, "README.md (Python API)", "exec"), namespace)  # noqa: S102
    model, arch, plan = namespace["model"], namespace["arch"], namespace["plan"]
    assert (arch, namespace["num_classes"], len(plan.steps)) == ("resnet18", 1000, 1)
    before = measure(build_model("resnet18", num_classes=1000), (3, 64, 64)).macs
    assert 0.45 <= 1 - measure(model, (3, 64, 64)).macs / before <= 0.55  # Budget("macs", 0.5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
