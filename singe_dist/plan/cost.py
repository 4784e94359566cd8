"""What a model costs (MACs, parameters) and what removing channels of a group saves.

MACs count the multiply-accumulates of convolutions and linear layers for one sample, the usual
convention of pruning papers; parameters count every learnable tensor. :class:`CostModel` predicts
both exactly for any number of channels removed per group, without touching the model: each layer's
cost is a product of its current input and output widths, and each group changes a known set of
widths. The global selection uses it to stop exactly at the budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from singe_dist.plan.limits import check_metric
from singe_dist.relevance.groups import ChannelGroup


@dataclass(frozen=True)
class Footprint:
    """MACs per sample and number of parameters of a model."""

    macs: int
    params: int

    def get(self, metric: str) -> int:
        check_metric(metric)
        return self.macs if metric == "macs" else self.params


def spatial_positions(model: nn.Module, input_size: Sequence[int]) -> dict[nn.Module, int]:
    """Output positions per sample (H*W for convolutions, tokens for linear layers) of each layer.

    For ``nn.MultiheadAttention`` the value is its whole MACs per sample (projections and the two
    attention products): it calls its projections functionally, so no Linear hook sees them, and its
    channels are never pruned (``find_groups`` leaves attention out), so the cost is a constant.
    """
    positions: dict[nn.Module, int] = {}
    handles = []

    def record(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        channels = output.shape[1] if isinstance(module, nn.Conv2d) else output.shape[-1]
        positions[module] = output.numel() // (output.shape[0] * channels)

    def attention(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        seq = 1 if module.batch_first else 0
        q_len, k_len, e = query.shape[seq], key.shape[seq], module.embed_dim
        positions[module] = (q_len * e * e + k_len * e * (module.kdim + module.vdim)  # q, k, v projections
                             + 2 * q_len * k_len * e + q_len * e * e)  # QK^T, AV, output projection

    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_pre_hook(attention, with_kwargs=True))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return positions


def _layer_macs(module: nn.Module, positions: int, c_in: int, c_out: int, depthwise: bool) -> int:
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        per_out = kernel if depthwise else kernel * c_in // module.groups
        return positions * c_out * per_out
    if isinstance(module, nn.Linear):
        return positions * c_out * c_in
    return 0


def _layer_params(module: nn.Module, c_in: int, c_out: int, depthwise: bool) -> int:
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size[0] * module.kernel_size[1]
        weight = c_out * kernel * (1 if depthwise else c_in // module.groups)
        return weight + (c_out if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        return c_out * c_in + (c_out if module.bias is not None else 0)
    own = sum(p.numel() for p in module.parameters(recurse=False))
    width = _width(module)
    return own * c_out // width if width else own


def _width(module: nn.Module) -> int:
    for attr in ("num_features", "num_channels", "out_channels", "out_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if hasattr(module, "normalized_shape"):
        return int(module.normalized_shape[0])
    return 0


def _in_width(module: nn.Module) -> int:
    for attr in ("in_channels", "in_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return _width(module)


def measure(model: nn.Module, input_size: Sequence[int], positions: dict[nn.Module, int] | None = None) -> Footprint:
    """Measure MACs (conv + linear, one sample) and parameters of a real model.

    ``positions``: the model's :func:`spatial_positions`, measured once, for a caller that measures the
    same modules many times while their widths change (pruning in place): no forward pass then.
    """
    positions = spatial_positions(model, input_size) if positions is None else positions
    macs = 0
    for module, pos in positions.items():
        if isinstance(module, nn.MultiheadAttention):
            macs += pos
            continue
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        macs += _layer_macs(module, pos, _in_width(module), _width(module), depthwise)
    return Footprint(macs=macs, params=sum(p.numel() for p in model.parameters()))


class CostModel:
    """Exact MACs and parameters of the model after removing ``r_g`` channels from each group ``g``."""

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], input_size: Sequence[int]) -> None:
        positions = spatial_positions(model, input_size)
        self.base = measure(model, input_size)
        # per touched layer: base widths and how many of its in/out indices each root channel carries
        self._layers: dict[nn.Module, dict] = {}
        self._groups_of_layer: dict[str, list[nn.Module]] = {}
        for group in groups:
            touched = []
            for member in group.members:
                module = member.module
                if not any(True for _ in module.parameters(recurse=False)):
                    continue
                info = self._layers.setdefault(
                    module,
                    {
                        "pos": positions.get(module, 0),
                        "in": _in_width(module),
                        "out": _width(module),
                        "depthwise": isinstance(module, nn.Conv2d)
                        and module.groups > 1
                        and module.groups == module.in_channels,
                        "per_channel": {},
                    },
                )
                # indices of this layer per removed root channel (1 normally, H*W after a flatten)
                per_root = len(member.idxs) / max(1, group.size)
                key = (group.id, "out" if member.is_out or info["depthwise"] else "in")
                info["per_channel"][key] = info["per_channel"].get(key, 0) + per_root
                touched.append(module)
            self._groups_of_layer[group.id] = list(dict.fromkeys(touched))
        self._base_cost = {m: self._cost(m, {}) for m in self._layers}
        self.removed: dict[str, int] = {}
        self._current = dict(self._base_cost)
        self.macs, self.params = self.base.macs, self.base.params

    def _cost(self, module: nn.Module, removed: Mapping[str, int]) -> tuple[int, int]:
        info = self._layers[module]
        c_in, c_out = info["in"], info["out"]
        for (gid, side), per in info["per_channel"].items():
            drop = int(round(removed.get(gid, 0) * per))
            if side == "out":
                c_out -= drop
            else:
                c_in -= drop
        if info["depthwise"]:
            c_in = c_out
        return (
            _layer_macs(module, info["pos"], c_in, c_out, info["depthwise"]),
            _layer_params(module, c_in, c_out, info["depthwise"]),
        )

    def remove(self, group_id: str, count: int = 1) -> tuple[int, int]:
        """Record ``count`` more channels removed from a group; return the (MACs, params) saved."""
        self.removed[group_id] = self.removed.get(group_id, 0) + count
        saved_macs = saved_params = 0
        for module in self._groups_of_layer[group_id]:
            macs, params = self._cost(module, self.removed)
            old_macs, old_params = self._current[module]
            saved_macs += old_macs - macs
            saved_params += old_params - params
            self._current[module] = (macs, params)
        self.macs -= saved_macs
        self.params -= saved_params
        return saved_macs, saved_params

    def footprint(self) -> Footprint:
        return Footprint(macs=self.macs, params=self.params)

    def channel_costs(self) -> dict[str, tuple[int, int]]:
        """(MACs, params) that removing one channel of each group saves from the current state."""
        out = {}
        for gid, layers in self._groups_of_layer.items():
            probe = dict(self.removed)
            probe[gid] = probe.get(gid, 0) + 1
            macs = params = 0
            for module in layers:
                new_macs, new_params = self._cost(module, probe)
                macs += self._current[module][0] - new_macs
                params += self._current[module][1] - new_params
            out[gid] = (macs, params)
        return out
