"""Dependency groups and the consumer gates that define SInGE's removal path.

A *group* is a set of coupled channels that can only be removed together (for example a residual
stream channel that lives in several convolutions). torch-pruning's ``DependencyGraph`` finds them
and does the removal; this module indexes each group by the name of its root module and records,
for every layer of the group, which of its input or output indices belong to which root channel.

The *consumers* of a group are the layers that read a channel and mix it into other channels:
convolutions with ``groups == 1`` and linear layers. Scaling a consumer's input slice by ``mu``
scales the channel as everything downstream sees it; ``mu = 0`` is exactly the network with the
channel removed. We apply ``mu`` to the consumer's *input* (``W[:, k] * (mu x_k) == (mu W[:, k]) x_k``),
which lets every sample in a batch carry its own gates: many points of many removal paths are then
evaluated in one forward/backward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from singe_dist.errors import SingeError

_CONSUMER_HANDLERS = {tp.prune_conv_in_channels, tp.prune_linear_in_channels}
_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)  # the layers that may hold parameters
log = logging.getLogger(__name__)
_ALREADY_WARNED: set[str] = set()  # "left unpruned" lines logged so far in this process


def _is_grouped(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise: it mixes the channels of each of its groups."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not (
        module.groups == module.in_channels == module.out_channels)


def check_supported(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Refuse, in one line and before any tracing, a model torch-pruning cannot follow; else its unwrapped parameters.

    Window attention with relative position tables (Swin, MaxViT) is refused: tracing it takes minutes
    and gigabytes, and its channels would all be left out anyway. Parameters held outside a layer
    (ConvNeXt's layer scales, ViT's class token and position embedding) are returned for
    torch-pruning's ``unwrapped_parameters`` (channel dimension: their last one of size > 1); the
    groups they touch are left out by :func:`find_groups`. Scanning modules takes milliseconds.
    """
    unwrapped = []
    for name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own or isinstance(module, (*_LAYERS, nn.MultiheadAttention)) or _is_norm(module):
            continue
        where = f"{name!r} ({type(module).__name__})" if name else f"the model itself ({type(module).__name__})"
        if "attention" in type(module).__name__.lower() or any("relative_position" in p for p, _ in own):
            raise SingeError(f"model not supported: {where} is window attention with a relative position table "
                             "(Swin, MaxViT), which torch-pruning cannot trace in reasonable time and memory")
        for _, param in own:
            sizes = [i for i, n in enumerate(param.shape) if n > 1]
            unwrapped.append((param, sizes[-1] if sizes else 0))
    return unwrapped


def _is_norm(module: nn.Module) -> bool:
    """A normalisation across channels (LayerNorm, GroupNorm, torchvision's LayerNorm2d), not BatchNorm."""
    kind = type(module).__name__.lower()
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or ("norm" in kind and "batchnorm" not in kind)


def _why_not_gated(module: object) -> str | None:
    """Why gating a channel of a group with this member at 0 would not be its removal, or None."""
    if isinstance(module, nn.Parameter):
        return "a parameter outside any layer (layer scale, class token, position embedding)"
    if _is_grouped(module):
        return f"a grouped convolution (groups={module.groups})"
    if isinstance(module, nn.Module) and _is_norm(module):
        return f"a {type(module).__name__} across channels"
    if isinstance(module, nn.MultiheadAttention):
        return "attention"
    return None


@dataclass(frozen=True)
class GroupMember:
    """One layer of a group: which of its indices belong to which root channel."""

    name: str
    module: nn.Module
    is_out: bool  # True: output channels (rows) of the layer; False: its input channels
    is_consumer: bool  # reads the channel and mixes it into others (conv groups=1, linear input)
    idxs: torch.Tensor  # indices in the layer's own dimension
    root_idxs: torch.Tensor  # the root channel each index belongs to


@dataclass
class ChannelGroup:
    """A set of coupled channels, named by its root module (the layer whose outputs define it)."""

    id: str
    size: int
    members: list[GroupMember]
    tp_group: tp.dependency.Group = field(repr=False)

    @property
    def consumers(self) -> list[GroupMember]:
        """Layers that mix this group's channels into others: where the removal path is applied."""
        return [m for m in self.members if m.is_consumer]


def _is_consumer(module: nn.Module, handler: object) -> bool:
    if handler not in _CONSUMER_HANDLERS:
        return False
    return not isinstance(module, nn.Conv2d) or module.groups == 1


def output_layer(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """The layer that produces the logits: its outputs are classes, never channels to prune."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        n_out = model(example_inputs).shape[1]
        model.train(was_training)
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == n_out:
            last = module
        elif isinstance(module, nn.Conv2d) and module.out_channels == n_out:
            last = module
    if last is None:
        raise SingeError("cannot find the classifier output layer (a Linear or Conv2d with one output per class)")
    return last


def example_input(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    """A one-sample input of ``input_size`` (C, H, W) on the model's device."""
    device = next(model.parameters()).device
    return torch.randn(1, *input_size, device=device)


def build_graph(model: nn.Module, example_inputs: torch.Tensor) -> tp.DependencyGraph:
    """Trace the model into a torch-pruning dependency graph (after :func:`check_supported`)."""
    unwrapped = check_supported(model)
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs,
                                                     unwrapped_parameters=unwrapped or None)
    except SingeError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch-pruning's tracer fails in many ways on models it cannot follow
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise SingeError(f"model not supported: torch-pruning cannot trace the channel dependencies of "
                         f"{type(model).__name__} ({type(exc).__name__}{': ' + detail if detail else ''})") from exc
    finally:
        model.train(was_training)


def find_groups(
    model: nn.Module,
    example_inputs: torch.Tensor,
    ignored_layers: Sequence[str] = (),
    graph: tp.DependencyGraph | None = None,
) -> list[ChannelGroup]:
    """All prunable channel groups of ``model``, in module order.

    ``ignored_layers`` are module names whose output channels must stay; the classifier output
    layer is always ignored. A group is left out, with one logged line, when gating its channels to 0
    at the consumers would not be their removal, so relevance would be integrated along a path that
    does not end at the removal applied: it passes through a grouped (non-depthwise) convolution
    (which mixes the channels of its group), a LayerNorm/GroupNorm (statistics across channels),
    attention, or a parameter outside any layer. ConvNeXt and ViT then prune their MLP widths.
    """
    graph = graph or build_graph(model, example_inputs)
    names = {module: name for name, module in model.named_modules()}
    modules = dict(model.named_modules())
    unknown = [n for n in ignored_layers if n not in modules]
    if unknown:
        raise SingeError(f"ignored layer {unknown[0]!r} is not a module of the model")
    ignored = [output_layer(model, example_inputs)] + [modules[n] for n in ignored_layers]
    groups, refused = [], []
    for tp_group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        members, why = [], None
        for item in tp_group.items:
            module = item.dep.target.module
            why = why or _why_not_gated(module)
            if not isinstance(module, nn.Module) or module not in names:
                continue  # functional ops (add, flatten, ...) carry no weights
            members.append(
                GroupMember(
                    name=names[module],
                    module=module,
                    is_out=graph.is_out_channel_pruning_fn(item.dep.handler),
                    is_consumer=_is_consumer(module, item.dep.handler),
                    idxs=torch.as_tensor(list(item.idxs), dtype=torch.long),
                    root_idxs=torch.as_tensor(list(item.root_idxs), dtype=torch.long),
                )
            )
        root = tp_group[0].dep.target.module
        if why is not None:
            refused.append(f"{names[root]} ({why})")
            continue
        groups.append(ChannelGroup(id=names[root], size=len(tp_group[0].idxs), members=members, tp_group=tp_group))
    if refused:
        message = (f"{len(refused)} channel group(s) left unpruned: gating a channel to 0 is not its removal where "
                   f"it passes through {', '.join(refused[:3])}{' ...' if len(refused) > 3 else ''}")
        # once per process and model shape: a job finds the groups again at every pruning step
        log.log(logging.DEBUG if message in _ALREADY_WARNED else logging.WARNING, message)
        _ALREADY_WARNED.add(message)
    if not groups:
        raise SingeError("the model has no prunable channel groups"
                         + (f" (all {len(refused)} pass through layers where gating is not removal)" if refused else ""))
    return groups


class Gates:
    """Per-sample removal-path gates on the consumers of some groups.

    Inside ``with gates.active({group_id: G})`` (``G`` of shape ``(batch, group.size)``), every
    consumer of that group sees its input channel ``k`` of sample ``b`` multiplied by ``G[b, k]``.
    Gradients of the loss with respect to ``G`` are the path derivatives ``dL/dmu``.
    """

    def __init__(self, groups: Sequence[ChannelGroup]) -> None:
        self._by_consumer: dict[nn.Module, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        for group in groups:
            for member in group.consumers:
                self._by_consumer.setdefault(member.module, []).append((group.id, member.idxs, member.root_idxs))
        self._values: Mapping[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        x = args[0]
        scale = None
        for group_id, idxs, root_idxs in self._by_consumer[module]:
            gate = self._values.get(group_id)
            if gate is None:
                continue
            if scale is None:
                width = x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1]
                scale = torch.ones(x.shape[0], width, dtype=x.dtype, device=x.device)
            idxs = idxs.to(x.device)
            scale = scale.index_copy(1, idxs, scale[:, idxs] * gate[:, root_idxs.to(x.device)].to(x.dtype))
        if scale is None:
            return None
        if isinstance(module, nn.Linear):  # channels last: (N, C), (N, tokens, C) in ViT, (N, H, W, C) in ConvNeXt
            return (x * scale.view(scale.shape[0], *([1] * (x.dim() - 2)), scale.shape[1]),) + tuple(args[1:])
        return (x * scale.view(*scale.shape, *([1] * (x.dim() - 2))),) + tuple(args[1:])

    @contextmanager
    def active(self, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Apply ``values`` (group id -> per-sample gates) for the duration of the block."""
        self._values = values
        self._handles = [m.register_forward_pre_hook(self._hook) for m in self._by_consumer]
        try:
            yield
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles = []
            self._values = {}
