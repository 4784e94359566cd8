"""Torch-Pruning's recipes, run through torch_pruning's own pruners and importances (the fair fight's peer rows).

Nothing here re-implements a Torch-Pruning criterion with ours: each recipe is a ``torch_pruning``
pruner (``BasePruner``, formerly ``MetaPruner``, or DepGraph's ``GroupNormPruner``) with a
``torch_pruning.importance`` object, built as Torch-Pruning's ``benchmarks/main.py`` builds it
(classifier ignored, ``pruning_ratio=1.0``, ``iterative_steps=400``) and stepped as its
``prune_to_target_macs`` steps it. The one addition: each step runs in Torch-Pruning's ``interactive``
mode and stops at the first group that reaches the MACs target, so its network lands on the same
target as ours within one channel (Torch-Pruning stops at the first *step* that reaches it).
MACs are counted by ``singe_dist.plan.cost`` for every recipe alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from singe_dist.plan.cost import measure, spatial_positions

ITERATIVE_STEPS = 400  # Torch-Pruning's benchmarks/main.py: small steps until the speed-up is reached
SPARSE_REG = 5e-4  # its README's group_sl command for ResNet-56 on CIFAR-10


@dataclass(frozen=True)
class PeerRecipe:
    """One of Torch-Pruning's recipes: its importance, its pruner, and what the pruner needs."""

    importance: Callable[[], tp.importance.Importance]
    global_pruning: bool
    sparse_learning: bool = False  # GroupNormPruner: group-norm regularised training before pruning
    gradients: bool = False  # Taylor: gradients of the calibration loss before every step


PEERS: dict[str, PeerRecipe] = {
    "magnitude uniform": PeerRecipe(lambda: tp.importance.GroupMagnitudeImportance(p=2), global_pruning=False),
    "magnitude global": PeerRecipe(lambda: tp.importance.GroupMagnitudeImportance(p=2), global_pruning=True),
    "taylor": PeerRecipe(lambda: tp.importance.GroupTaylorImportance(), global_pruning=False, gradients=True),
    "group-sl": PeerRecipe(lambda: tp.importance.GroupMagnitudeImportance(p=2, normalizer="max"),
                           global_pruning=True, sparse_learning=True),
}


def build_pruner(model: nn.Module, example: torch.Tensor, recipe: PeerRecipe, num_classes: int) -> tp.pruner.BasePruner:
    """The recipe's pruner, built as Torch-Pruning's benchmark script builds it (classifier ignored)."""
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    kwargs = dict(importance=recipe.importance(), iterative_steps=ITERATIVE_STEPS, pruning_ratio=1.0,
                  global_pruning=recipe.global_pruning, ignored_layers=ignored)
    if recipe.sparse_learning:
        return tp.pruner.GroupNormPruner(model, example, reg=SPARSE_REG, **kwargs)
    return tp.pruner.BasePruner(model, example, **kwargs)


def _calibration_gradients(model: nn.Module, calibration: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Taylor's input: the cross-entropy's gradient on the calibration batches, accumulated in every ``.grad``
    (one ``backward`` of the batch-mean loss per batch, as Torch-Pruning's scripts do)."""
    device = next(model.parameters()).device
    model.eval()  # BatchNorm's running statistics, as our criteria score
    model.zero_grad()
    for x, y in calibration:
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()


def prune_to_macs(model: nn.Module, pruner: tp.pruner.BasePruner, recipe: PeerRecipe, target_macs: float,
                  input_size: tuple[int, int, int], calibration: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Torch-Pruning's progressive loop until ``measure(model).macs <= target_macs``; returns what it did.

    Every step is Torch-Pruning's ``pruner.step(interactive=True)``: its importance ranks, its pruner
    picks the indices of each group, and ``group.prune()`` removes them. The loop stops after the first
    group that reaches the target. ``calibration`` feeds Taylor's gradients, accumulated once before
    pruning as Torch-Pruning's ImageNet and LLM scripts do (its pruning functions prune ``.grad`` with
    the weights, so they stay aligned).
    """
    model.eval()
    positions = spatial_positions(model, input_size)  # layers keep their output sizes while they narrow
    steps, backward_passes = 0, 0
    if recipe.gradients:
        _calibration_gradients(model, calibration)
        backward_passes = len(calibration)
    while measure(model, input_size, positions).macs > target_macs:
        if steps >= ITERATIVE_STEPS:
            raise RuntimeError(f"torch_pruning's {ITERATIVE_STEPS} steps did not reach {target_macs:.0f} MACs")
        steps += 1
        for group in pruner.step(interactive=True):
            group.prune()
            if measure(model, input_size, positions).macs <= target_macs:
                break
    model.zero_grad(set_to_none=True)
    return {"tp_steps": steps, "backward_passes": backward_passes}


def sparse_learning(model: nn.Module, pruner: tp.pruner.GroupNormPruner, batches: Iterator, iters: int,
                    lr: float = 0.01) -> float:
    """DepGraph's sparse learning: Torch-Pruning's ``train_model(regularize=True)`` for ``iters`` iterations.

    SGD (momentum 0.9, no weight decay: the group regulariser replaces it), the rate divided by 10 at 60%
    and 80%, and ``pruner.regularize(model)`` between the backward pass and the step. Returns the mean loss.
    """
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    pruner.update_regularizer()
    model.train()
    total = 0.0
    for i in range(iters):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.1 ** sum(i >= m * iters for m in (0.6, 0.8))
        x, y = next(batches)
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        pruner.regularize(model)
        optimizer.step()
        total += loss.item()
    return total / max(1, iters)
