"""Torch-Pruning's rows of the fair fight (benchmarks/peers.py) land on the same MACs as ours, through its own code."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import peers  # noqa: E402

from singe_dist.models import build_model  # noqa: E402
from singe_dist.plan.cost import CostModel, measure  # noqa: E402
from singe_dist.plan.decide import Budget, prune_one_shot  # noqa: E402
from singe_dist.relevance.criteria import CriterionConfig  # noqa: E402
from singe_dist.relevance.groups import example_input, find_groups  # noqa: E402

SIZE = (3, 28, 28)


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("cifar_resnet20", 10).eval()


@pytest.mark.parametrize("recipe", ["magnitude uniform", "magnitude global", "taylor", "group-sl"])
@pytest.mark.parametrize("fraction", [0.5, 0.85])
def test_a_torch_pruning_row_and_ours_reach_the_same_macs_within_one_channel(resnet20, recipe, fraction) -> None:
    original = measure(resnet20, SIZE).macs
    target = original * (1 - fraction)
    calibration = [(torch.randn(8, *SIZE), torch.randint(0, 10, (8,)))]
    ours = copy.deepcopy(resnet20)
    prune_one_shot(ours, "cifar_resnet20", 10, SIZE, calibration, CriterionConfig(name="magnitude"),
                   Budget("macs", fraction))
    theirs = copy.deepcopy(resnet20)
    pruner = peers.build_pruner(theirs, torch.randn(1, *SIZE), peers.PEERS[recipe], 10)
    done = peers.prune_to_macs(theirs, pruner, peers.PEERS[recipe], target, SIZE, calibration)
    assert isinstance(pruner, torch_pruning_pruner(recipe))
    assert done["tp_steps"] > 1  # Torch-Pruning's progressive loop, not one big cut
    # the largest MACs one channel of the unpruned model costs: a bound on either side's last removal
    fresh = copy.deepcopy(resnet20)
    costs = CostModel(fresh, find_groups(fresh, example_input(fresh, SIZE)), SIZE).channel_costs()
    one_channel = max(macs for macs, _ in costs.values())
    ours_macs, their_macs = measure(ours, SIZE).macs, measure(theirs, SIZE).macs
    assert ours_macs <= target and their_macs <= target
    assert abs(ours_macs - their_macs) <= one_channel
    assert theirs.fc.out_features == 10  # the classifier is never pruned
    with torch.no_grad():
        assert theirs(torch.randn(2, *SIZE)).shape == (2, 10)


def torch_pruning_pruner(recipe: str) -> type:
    import torch_pruning as tp

    return tp.pruner.GroupNormPruner if peers.PEERS[recipe].sparse_learning else tp.pruner.BasePruner


def test_taylor_reads_the_gradients_of_the_calibration_loss(resnet20) -> None:
    """Taylor's choice changes with the calibration images: the row uses the data it is given."""
    kept = []
    for seed in (1, 2):
        generator = torch.Generator().manual_seed(seed)
        batch = (torch.randn(8, *SIZE, generator=generator), torch.randint(0, 10, (8,), generator=generator))
        model = copy.deepcopy(resnet20)
        pruner = peers.build_pruner(model, torch.randn(1, *SIZE), peers.PEERS["taylor"], 10)
        peers.prune_to_macs(model, pruner, peers.PEERS["taylor"], measure(resnet20, SIZE).macs * 0.5, SIZE, [batch])
        kept.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert kept[0].shape != kept[1].shape or not torch.equal(kept[0], kept[1])


def test_sparse_learning_shrinks_the_least_important_groups(resnet20) -> None:
    """DepGraph's regulariser, through Torch-Pruning's GroupNormPruner, pulls group norms apart."""
    model = copy.deepcopy(resnet20)
    pruner = peers.build_pruner(model, torch.randn(1, *SIZE), peers.PEERS["group-sl"], 10)
    pruner.reg = 0.5  # strong, so that a few steps show it
    batches = iter([(torch.randn(8, *SIZE), torch.randint(0, 10, (8,)))] * 5)
    before = model.conv1.weight.detach().clone()
    peers.sparse_learning(model, pruner, batches, 5)
    after = model.conv1.weight.detach()
    assert after.norm() < before.norm()
