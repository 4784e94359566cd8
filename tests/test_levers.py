"""The levers of the field around the criterion: BatchNorm re-estimation, layer allocation, distillation,
greedy sub-steps, and the Fashion-MNIST data and CIFAR ResNets the quality benchmark runs on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from singe_dist.config import load_config
from singe_dist.engine.train import distillation_loss, recalibrate_batchnorm, tensor_batches
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.plan.cost import CostModel
from singe_dist.plan.select import Constraints, Policy, select_channels
from singe_dist.relevance.groups import example_input, find_groups

from .support import DIGITS_SIZE, small_job_config, write_idx

INPUT = (3, DIGITS_SIZE, DIGITS_SIZE)


# ------------------------------------------------------------------------------------- BatchNorm
def _conv_bn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_bn_reestimation_changes_only_running_statistics_and_equals_a_hand_computation() -> None:
    model = _conv_bn()
    batches = [(torch.randn(5, 3, 6, 6) * (i + 1) + i, torch.zeros(5, dtype=torch.long)) for i in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    used = recalibrate_batchnorm(model, batches)
    assert used == 3
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.running_mean", "1.running_var", "4.running_mean", "4.running_var"}
    assert not model.training and model[1].momentum == 0.1
    # by hand: layer by layer in training mode, the mean over batches of the batch mean and unbiased variance
    means, variances = [], []
    for x, _ in batches:
        h = model[0](x).double()
        means.append(h.mean((0, 2, 3)))
        variances.append(h.var((0, 2, 3), unbiased=True))
    assert torch.allclose(model[1].running_mean.double(), torch.stack(means).mean(0), atol=1e-6)
    assert torch.allclose(model[1].running_var.double(), torch.stack(variances).mean(0), atol=1e-6)
    second = []
    for x, _ in batches:  # the second BN sees the first one normalising with its batch statistics
        h = model[3](F.relu(F.batch_norm(model[0](x), None, None, model[1].weight, model[1].bias, training=True)))
        second.append(h.double().mean((0, 2, 3)))
    assert torch.allclose(model[4].running_mean.double(), torch.stack(second).mean(0), atol=1e-5)


def test_bn_reestimation_across_ranks_equals_one_process_on_all_the_data() -> None:
    """Two ranks' sums all-reduced give every rank exactly what one process computes from all batches."""
    batches = [(torch.randn(4, 3, 6, 6) + i, torch.zeros(4, dtype=torch.long)) for i in range(4)]
    whole = _conv_bn()
    recalibrate_batchnorm(whole, batches)
    shares = []
    for rank in range(2):  # each rank's sums, as the all-reduce would receive them
        captured = []
        recalibrate_batchnorm(_conv_bn(), batches[rank::2], lambda t: captured.append(t.clone()) or t)
        shares.append(captured[0])
    total = shares[0] + shares[1]
    ranks = [_conv_bn() for _ in range(2)]
    for rank, model in enumerate(ranks):
        recalibrate_batchnorm(model, batches[rank::2], lambda _t: total)
    for model in ranks:
        for key in ("1.running_mean", "1.running_var", "4.running_mean", "4.running_var"):
            assert torch.allclose(model.state_dict()[key], whole.state_dict()[key], atol=1e-6)
    assert torch.equal(ranks[0][1].running_var, ranks[1][1].running_var)


# ------------------------------------------------------------------------------------- allocation
def _scores(groups, seed: int = 0) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Random scores on a scale that grows with the group's position: global ranking strips early groups."""
    gen = torch.Generator().manual_seed(seed)
    return {g.id: torch.rand(g.size, generator=gen, dtype=torch.float64) * (1 + i) for i, g in enumerate(groups)}


@pytest.mark.parametrize("round_to", [1, 4])
def test_uniform_allocation_removes_the_same_fraction_from_every_group(round_to: int) -> None:
    model = build_model("cifar_resnet20", 10)
    groups = find_groups(model, example_input(model, (3, 28, 28)))
    cost = CostModel(model, groups, (3, 28, 28))
    constraints = Constraints(min_keep_fraction=0.1, round_to=round_to)
    selection = select_channels(_scores(groups), cost, cost.macs * 0.5, Policy(constraints=constraints, allocation="uniform"))
    assert selection.reached
    fractions = {g.id: len(selection.channels.get(g.id, [])) / g.size for g in groups}
    unit = max(round_to, 1) / min(g.size for g in groups)
    assert max(fractions.values()) - min(fractions.values()) <= unit + 1e-9, fractions
    # inside each group the criterion still decides: the lowest-scored channels go
    scores = _scores(groups)
    for gid, chosen in selection.channels.items():
        kept = sorted(set(range(len(scores[gid]))) - set(chosen))
        assert max(scores[gid][chosen]) <= min(scores[gid][kept])
    # global with the same scores strips groups unevenly (the contrast that makes the test meaningful)
    model = build_model("cifar_resnet20", 10)
    groups = find_groups(model, example_input(model, (3, 28, 28)))
    cost = CostModel(model, groups, (3, 28, 28))
    global_sel = select_channels(_scores(groups), cost, cost.macs * 0.5,
                                 Policy(constraints=constraints, allocation="global"))
    spread = [len(global_sel.channels.get(g.id, [])) / g.size for g in groups]
    assert max(spread) - min(spread) > 2 * unit


def test_max_remove_fraction_caps_every_group_relative_to_its_original_width() -> None:
    model = build_model("cifar_resnet20", 10)
    groups = find_groups(model, example_input(model, (3, 28, 28)))
    scores = _scores(groups)
    first = next(g for g in groups if g.size == 64)
    scores[first.id] = scores[first.id] - 10.0  # this group alone looks removable: global would strip it
    cost = CostModel(model, groups, (3, 28, 28))
    capped = select_channels(scores, cost, cost.macs * 0.6,
                            Policy(constraints=Constraints(max_remove_fraction=0.5), allocation="global"))
    assert capped.reached
    assert len(capped.channels[first.id]) == 32
    assert all(len(c) <= math.floor(0.5 * g.size) for g in groups for c in [capped.channels.get(g.id, [])])
    # relative to the original width: a group already cut to 40 of 64 may lose only 32 - 24 = 8 more
    cost = CostModel(model, groups, (3, 28, 28))
    sizes = {g.id: g.size for g in groups}
    original = {**sizes, first.id: 64 + 24}
    later = select_channels(scores, cost, cost.macs * 0.6,
                            Policy(constraints=Constraints(max_remove_fraction=0.5), original_sizes=original,
                                   allocation="global"))
    assert len(later.channels[first.id]) == 44 - 24


def test_bad_allocation_settings_are_one_line() -> None:
    with pytest.raises(SingeError, match="prune.allocation"):
        load_config(None, ["prune.allocation=layerwise"])
    with pytest.raises(SingeError, match="prune.max_remove_fraction"):
        load_config(None, ["prune.max_remove_fraction=0"])
    with pytest.raises(SingeError, match="prune.substeps"):
        load_config(None, ["prune.substeps=0"])


# ------------------------------------------------------------------------------------- distillation
def test_distillation_loss_equals_kl_by_hand() -> None:
    torch.manual_seed(0)
    student, teacher, t = torch.randn(6, 10), torch.randn(6, 10), 3.0
    p = torch.softmax(teacher / t, 1)
    by_hand = (p * (p.log() - torch.log_softmax(student / t, 1))).sum(1).mean() * t * t
    assert torch.allclose(distillation_loss(student, teacher, t), by_hand, atol=1e-6)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)


def test_train_steps_with_a_teacher_minimises_the_mixed_loss(trained_digits_model, digits_data) -> None:
    """With weight 1 the student learns only the teacher's outputs: labels are ignored entirely."""
    from singe_dist.engine.train import make_optimizer, train_steps

    teacher = trained_digits_model
    x, y = digits_data["train"]
    student = build_model("digits_resnet", 10)
    wrong = (y + 1) % 10  # labels the teacher disagrees with: a CE term would pull the other way
    batches = tensor_batches(x, wrong, 64, shuffle=True, repeat=True)
    train_steps(student, make_optimizer(student, 0.05), batches, 60, 0.05, teacher=teacher, distill_weight=1.0,
                temperature=2.0)
    student.eval()
    with torch.no_grad():
        agree = (student(x[:300]).argmax(1) == teacher(x[:300]).argmax(1)).float().mean()
    assert agree > 0.6


# ------------------------------------------------------------------------------------- in the job
def test_job_with_uniform_allocation_substeps_bn_and_distillation(digits_shards, digits_baseline, tmp_path) -> None:
    from singe_dist.engine.loop import PruneJob
    from singe_dist.plan.plan import Plan

    config = small_job_config(digits_shards, digits_baseline, tmp_path / "run", prune__allocation="uniform",
                              prune__substeps=2, prune__bn_batches=1, finetune__distill_weight=0.5)
    report = PruneJob(config, log=lambda _m: None).run()
    plan = Plan.load(tmp_path / "run" / "plan.json")
    assert len(plan.steps) == 2 * 2  # two pruning steps of two greedy sub-steps each
    assert report["final"]["fraction_removed"] >= 0.5 - 0.02
    assert report["wall_time_s"]["bn_recalibration"] > 0
    before = {gid: c["before"] for gid, c in report["channels"].items()}
    fractions = [1 - c["after"] / c["before"] for c in report["channels"].values() if c["before"]]
    assert max(fractions) - min(fractions) < 0.2  # uniform: every group lost about the same share


def test_distillation_needs_a_baseline(digits_shards, tmp_path) -> None:
    from singe_dist.engine.loop import PruneJob

    config = small_job_config(digits_shards, None, tmp_path / "run", finetune__distill_weight=0.5)
    with pytest.raises(SingeError, match="distill_weight > 0 needs model.checkpoint"):
        PruneJob(config, log=lambda _m: None).run()


def test_distillation_is_on_by_default_only_when_there_is_a_trained_model_to_distil_from() -> None:
    from singe_dist.config import DISTILL_WEIGHT, load_config

    assert DISTILL_WEIGHT == 0.5
    assert load_config(None, ["model.checkpoint=base.pt"]).finetune.distill_weight == DISTILL_WEIGHT
    assert load_config(None, []).finetune.distill_weight == 0.0  # no checkpoint: nothing to distil from
    assert load_config(None, ["model.checkpoint=base.pt", "finetune.distill_weight=0"]).finetune.distill_weight == 0
    assert load_config(None, ["model.checkpoint=base.pt", "finetune.distill_weight=0.2"]).finetune.distill_weight == 0.2


# ------------------------------------------------------------------------------------- data and models
def test_fashion_mnist_converter_on_tiny_idx_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from singe_dist.cli import main
    from singe_dist.data.shards import shard_loader, expand_shards

    rng = np.random.default_rng(0)
    source = tmp_path / "fmnist"
    source.mkdir()
    data = {}
    for split, (images, labels), n in (("train", ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"), 12),
                                       ("val", ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"), 5)):
        x, y = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(source / images, x)
        write_idx(source / labels, y)
        data[split] = (x, y)
    assert main(["shards", "--fashion-mnist", "--source", str(source), "--out", str(tmp_path / "out"),
                 "--per-shard", "5"]) == 0
    out = capsys.readouterr().out
    assert "train: 12 samples in 3 shard(s)" in out and "val: 5 samples in 1 shard(s)" in out
    loader = shard_loader(expand_shards(str(tmp_path / "out" / "val-{000000..000000}.tar")), mode="eval",
                          num_classes=10, batch_size=5, num_workers=0, transform=lambda img: img)
    (images, labels), = list(loader)
    x, y = data["val"]
    assert torch.equal(labels, torch.from_numpy(y)) and images.shape == (5, 3, 28, 28)
    assert torch.equal(images[:, 0], torch.from_numpy(x).to(torch.uint8))  # lossless, grey in every channel
    assert torch.equal(images[:, 0], images[:, 2])


def test_fashion_mnist_missing_files_name_the_package(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from singe_dist.cli import main

    assert main(["shards", "--fashion-mnist", "--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dataset-fashion-mnist" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("arch", "params"), [("cifar_resnet20", 0.27), ("cifar_resnet32", 0.46), ("cifar_resnet56", 0.85)])
def test_cifar_resnets_have_the_published_sizes(arch: str, params: float) -> None:
    model = build_model(arch, 10)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params, abs=0.01)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_replan_rescores_the_plan_along_its_joint_path(trained_digits_model, digits_data) -> None:
    """Re-planning keeps the budget and, here, changes the plan: channels cheap alone but costly together go."""
    import copy

    from singe_dist.plan.decide import Budget, prune_one_shot
    from singe_dist.relevance.criterion_config import CriterionConfig

    x, y = digits_data["train"][0][:128], digits_data["train"][1][:128]
    plans = {}
    for rounds in (0, 2):
        model = copy.deepcopy(trained_digits_model)
        plan, selection = prune_one_shot(model, "digits_resnet", 10, INPUT, [(x, y)],
                                         CriterionConfig(name="singe", steps=4, replan=rounds), Budget("macs", 0.6))
        assert selection.reached
        plans[rounds] = plan.steps[0]
    assert plans[0] != plans[2]
    with pytest.raises(SingeError, match="replan"):
        CriterionConfig(name="taylor", replan=1)
