"""A pruning plan: which channels of which group were removed, step by step.

The plan is the contract between ranks, runs and deployments. It names groups by the module name
of their root layer and channels by their index *at the time of the step* (indices shift after a
removal), so replaying the steps in order on a freshly built original model reproduces the pruned
architecture exactly. It is plain JSON: nothing in it is executed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch_pruning as tp
from torch import nn

from singe_dist.atomic import atomic_write_text
from singe_dist.errors import SingeError
from singe_dist.relevance.groups import build_graph, example_input

PLAN_FORMAT = "singe-dist/plan/v1"


@dataclass
class Plan:
    """Architecture name + input size + ordered removal steps ``[{group id: [channel, ...]}, ...]``."""

    arch: str
    num_classes: int
    input_size: tuple[int, int, int]
    steps: list[dict[str, list[int]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "steps": [{gid: sorted(int(c) for c in chans) for gid, chans in sorted(step.items())} for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> Plan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise SingeError(f"{source} is not a singe-dist plan (expected format {PLAN_FORMAT!r})")
        try:
            steps = [{str(g): [int(c) for c in chans] for g, chans in step.items()} for step in data["steps"]]
            return cls(
                arch=str(data["arch"]),
                num_classes=int(data["num_classes"]),
                input_size=tuple(int(v) for v in data["input_size"]),  # type: ignore[arg-type]
                steps=steps,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SingeError(f"{source} is malformed: {type(exc).__name__}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SingeError(f"{source} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source)

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise SingeError(f"plan file {path} does not exist")
        return cls.from_json(path.read_text(), source=f"plan file {path}")

    def digest(self) -> str:
        """A hash of the decisions, used to check that all ranks took the same plan."""
        return hashlib.sha256(json.dumps(self.to_dict()["steps"], sort_keys=True).encode()).hexdigest()


def _out_pruning_fn(module: nn.Module):  # noqa: ANN202 - a torch-pruning handler
    if isinstance(module, nn.Conv2d):
        return tp.prune_conv_out_channels
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    raise SingeError(f"plan names a {type(module).__name__} as a group root; only Conv2d and Linear can be")


def apply_step(
    model: nn.Module,
    step: dict[str, list[int]],
    input_size: tuple[int, int, int],
    graph: tp.DependencyGraph | None = None,
) -> None:
    """Remove the channels of one plan step from ``model`` in place (torch-pruning does the surgery).

    Groups in one step are disjoint channel sets, so their order does not matter.
    """
    modules = dict(model.named_modules())
    missing = [gid for gid in step if gid not in modules]
    if missing:
        raise SingeError(f"plan names module {missing[0]!r}, which the model does not have")
    graph = graph or build_graph(model, example_input(model, input_size))
    for gid, channels in sorted(step.items()):
        module = modules[gid]
        fn = _out_pruning_fn(module)
        width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        chans = sorted(set(int(c) for c in channels))
        if not chans:
            continue
        if chans[0] < 0 or chans[-1] >= width:
            raise SingeError(f"plan removes channel {chans[-1] if chans[-1] >= width else chans[0]} of {gid!r}, which has {width}")
        if len(chans) >= width:
            raise SingeError(f"plan removes all {width} channels of {gid!r}")
        graph.get_pruning_group(module, fn, chans).prune()


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Replay every step of ``plan`` on ``model`` (in place) and return it."""
    was_training = model.training
    model.eval()
    graph = build_graph(model, example_input(model, plan.input_size)) if plan.steps else None
    for step in plan.steps:
        apply_step(model, step, plan.input_size, graph)
    model.train(was_training)
    return model


def replay(plan: Plan) -> nn.Module:
    """Build the original architecture and replay the plan: the pruned architecture, untrained."""
    from singe_dist.models import build_model

    return apply_plan(build_model(plan.arch, plan.num_classes), plan)
