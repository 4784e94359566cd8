"""The removal self-check: on the user's own model, gating channels to 0 must equal removing them.

SInGE integrates the gradient along a path whose end (every consumer's input slice gated to 0) must
be the network with the channel structurally removed (design notes, section 2). That holds for the
layers :func:`~singe_dist.relevance.groups.check_supported` admits, but a user's model can hold
something no scan sees (a functional channel shuffle, a custom ``forward`` reading a channel twice).
So a job checks it before its first relevance step, on the model and data it will use: a sample of
groups, half of each group's channels gated to 0 in one forward pass, against a copy with the same
channels removed by torch-pruning. The cost is one model copy, one removal and two forward passes of
a few samples, small next to one relevance step (S gated passes per group over the calibration data);
only when the joint check fails are the groups checked one by one, to name the culprit.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from singe_dist.errors import SingeError
from singe_dist.plan.plan import apply_step
from singe_dist.relevance.groups import ChannelGroup, Gates

TOLERANCE = 1e-4  # max |gated - removed| relative to max |gated|; float32 agreement is about 1e-6


@dataclass(frozen=True)
class RemovalCheck:
    """What the self-check did: which groups, the worst relative difference, and its cost."""

    groups: tuple[str, ...]
    max_relative_diff: float
    seconds: float

    def line(self) -> str:
        return (f"removal self-check: gate-at-0 equals removal on {len(self.groups)} group(s) "
                f"(max relative difference {self.max_relative_diff:.1e}, {self.seconds:.1f}s)")


def _sample(groups: Sequence[ChannelGroup], count: int) -> list[ChannelGroup]:
    """``count`` groups spread evenly over the model (first, last and between), deterministic."""
    if len(groups) <= count:
        return list(groups)
    picks = sorted({round(i * (len(groups) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    return [groups[i] for i in picks]


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off while checking, restored after.

    On Ampere and later GPUs cuDNN convolutions default to TF32 (a 10-bit mantissa). Its rounding differs
    between the gated network and the slimmer removed one by ~1e-4 relative, which would fail a check
    about structure for a reason of precision (seen on an H200: 1.9e-4 on a CIFAR ResNet-20).
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _difference(model: nn.Module, groups: Sequence[ChannelGroup], removal: dict[str, list[int]],
                x: torch.Tensor, input_size: tuple[int, int, int]) -> float:
    """Relative difference between gating ``removal``'s channels to 0 and removing them."""
    chosen = [g for g in groups if g.id in removal]
    gates = {}
    for g in chosen:
        gate = torch.ones(len(x), g.size, device=x.device)
        gate[:, removal[g.id]] = 0.0
        gates[g.id] = gate
    with torch.no_grad(), Gates(chosen).active(gates):
        gated = model(x)
    removed_model = copy.deepcopy(model)
    apply_step(removed_model, removal, input_size)
    with torch.no_grad():
        removed = removed_model.eval()(x)
    scale = float(gated.abs().max()) or 1.0
    return float((gated - removed).abs().max()) / scale


def _layer_types(group: ChannelGroup) -> str:
    kinds = []
    for m in group.members:
        kind = type(m.module).__name__
        if isinstance(m.module, nn.Conv2d) and m.module.groups > 1:
            kind += f"(groups={m.module.groups})"
        kinds.append(kind)
    return ", ".join(sorted(set(kinds)))


def check_removal(model: nn.Module, groups: Sequence[ChannelGroup], x: torch.Tensor,
                  input_size: tuple[int, int, int], max_groups: int = 4, max_samples: int = 8) -> RemovalCheck:
    """Check gate-at-0 against removal on up to ``max_groups`` groups; one-line error naming a failing group.

    ``x``: a calibration batch (its first ``max_samples`` images are used). BatchNorm runs on its
    running statistics, as relevance does. The model is left as it was.
    """
    start = time.perf_counter()
    x = x[:max_samples]
    sample = _sample([g for g in groups if g.size > 1], max_groups)
    removal = {g.id: list(range(0, g.size, 2)) for g in sample}  # every other channel: half, never all
    was_training = model.training
    model.eval()
    try:
        with exact_float32():
            worst = _difference(model, groups, removal, x, input_size) if removal else 0.0
            if worst > TOLERANCE:
                for g in sample:
                    diff = _difference(model, groups, {g.id: removal[g.id]}, x, input_size)
                    if diff > TOLERANCE:
                        raise SingeError(
                            f"removal self-check failed on group {g.id!r} (layers: {_layer_types(g)}): gating "
                            f"{len(removal[g.id])} of its {g.size} channels to 0 differs from removing them by {diff:.1e} "
                            f"(relative, tolerance {TOLERANCE:.0e}); relevance would not measure the removal applied, "
                            "so this model is not supported (add the group's root to model.ignored_layers to skip it)")
                raise SingeError(f"removal self-check failed on groups {', '.join(removal)} together "
                                 f"(difference {worst:.1e}, each alone passes): this model is not supported")
    finally:
        model.train(was_training)
    return RemovalCheck(tuple(removal), worst, time.perf_counter() - start)
