"""``prune.reconstruct_batches``: refit the layers that read removed channels, so that little or no
fine-tuning is needed after a removal.

Removing channel k deletes the column ``W_c[:, k]`` of every consumer c (a dense convolution or linear
layer that reads k). The consumer's output then misses that column's contribution, and every layer
after it sees a shifted input. Channel pruning by least squares (He et al. 2017, "Channel Pruning for
Accelerating Very Deep Neural Networks"; Luo et al. 2017, ThiNet) refits each consumer's remaining
columns so that its output matches the unpruned one on calibration data: ordinary least squares from
the kept inputs to the old outputs, in closed form. It costs forward passes only.

How it is done here, with the removal not yet applied (call :func:`reconstruct` between the selection
and :func:`~singe_dist.plan.plan.apply_step`):

- the removed columns are zeroed in place: by the removal-path property (groups.py) that network *is*
  the pruned one, with the original shapes, so each consumer's output is directly comparable;
- consumers are refitted in the order the forward pass calls them, each on the inputs the network
  already refitted upstream gives it, so the errors do not pile up (the target is the consumer's
  output in a copy taken before the zeroing);
- a convolution's rows are its input patches at ``POSITIONS`` random output positions per image (more
  where the reader has more than a quarter as many unknowns as that gives rows);
- a reader run twice in one forward pass (shared weights), one with more than ``MAX_UNKNOWNS`` unknowns
  per output (VGG's first classifier layer) or a convolution with non-numeric or non-zero padding is
  refused in one line;
- the normal equations ``(X'X + lambda I) W' = X'Y`` are summed in float64, and ``all_reduce_sum``
  adds every rank's, so every rank solves the same system and sets the same weights;
- ``lambda`` is ``RIDGE`` times the mean diagonal of ``X'X``: it keeps the solve well posed when a
  kept input is constant on the calibration data.

Structural removal afterwards drops the zeroed columns; BatchNorm re-estimation (``bn_batches``) runs
after as before.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from singe_dist.errors import SingeError
from singe_dist.relevance.groups import ChannelGroup

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
POSITIONS = 16  # output positions sampled per image and convolution (more where 4 rows per unknown need more)
RIDGE = 1e-3
MAX_UNKNOWNS = 8192  # kept inputs x kernel of one reader: its float64 normal equations are 0.5 GB at this size


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


def removed_inputs(groups: Sequence[ChannelGroup], channels: Mapping[str, Sequence[int]]) -> dict[nn.Module, torch.Tensor]:
    """Every consumer that reads a channel of ``channels``, with the input indices it loses."""
    by_id = {g.id: g for g in groups}
    lost: dict[nn.Module, list[torch.Tensor]] = {}
    for gid, chans in channels.items():
        if not chans:
            continue
        gone = torch.as_tensor(sorted(chans), dtype=torch.long)
        for member in by_id[gid].consumers:
            lost.setdefault(member.module, []).append(member.idxs[torch.isin(member.root_idxs, gone)])
    return {m: torch.unique(torch.cat(parts)) for m, parts in lost.items()}


def _check(name: str, module: nn.Module, lost: torch.Tensor) -> None:
    """Refuse, in one line, a reader this least-squares refit cannot handle."""
    unknowns = module.weight[0].numel() - len(lost) * module.weight[0, 0].numel() + (module.bias is not None)
    if unknowns > MAX_UNKNOWNS:
        raise SingeError(f"prune.reconstruct_batches: cannot refit {name!r} ({type(module).__name__}): {unknowns} "
                         f"unknowns per output, more than {MAX_UNKNOWNS}; set prune.reconstruct_batches=0")
    if isinstance(module, nn.Linear):
        return
    if not isinstance(module, nn.Conv2d) or isinstance(module.padding, str) or module.padding_mode != "zeros":
        raise SingeError(f"prune.reconstruct_batches: cannot refit {name!r} ({type(module).__name__}"
                         f"{', padding ' + repr(module.padding) if isinstance(module, nn.Conv2d) else ''}); "
                         "only Linear and Conv2d with numeric zero padding; set prune.reconstruct_batches=0")


def _rows(module: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
          positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares rows: the consumer's inputs as its weight's columns see them (``positions`` random output
    positions per image of a convolution), and its outputs there."""
    if isinstance(module, nn.Linear):
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        if x.shape[0] > positions * 128:  # token inputs: a random subset of rows
            keep = torch.randperm(x.shape[0], generator=gen)[: positions * 128].to(x.device)
            x, y = x[keep], y[keep]
        return x, y
    n, _, h, w = y.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.padding, module.dilation
    p = min(positions, h * w)
    pos = torch.stack([torch.randperm(h * w, generator=gen)[:p] for _ in range(n)]).to(x.device)  # (n, p)
    i, j = pos // w, pos % w
    rows = (i * sh)[..., None] + torch.arange(kh, device=x.device) * dh  # (n, p, kh) in the padded input
    cols = (j * sw)[..., None] + torch.arange(kw, device=x.device) * dw
    padded = F.pad(x, (pw, pw, ph, ph))
    b = torch.arange(n, device=x.device)[:, None, None, None]
    patches = padded[b, :, rows[..., :, None], cols[..., None, :]]  # (n, p, kh, kw, C)
    x_rows = patches.permute(0, 1, 4, 2, 3).reshape(n * p, -1)  # columns ordered as W.view(out, C * kh * kw)
    y_rows = y.permute(0, 2, 3, 1).reshape(n, h * w, -1).gather(1, pos[..., None].expand(-1, -1, y.shape[1]))
    return x_rows, y_rows.reshape(n * p, -1)


def _capture(model: nn.Module, module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``module``'s input and output when ``model`` runs on ``x``; the forward pass stops there."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        seen.extend([args[0].detach(), out.detach()])
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0], seen[1]


def _call_order(model: nn.Module, modules: Sequence[nn.Module], x: torch.Tensor,
                names: Mapping[nn.Module, str]) -> list[nn.Module]:
    """The readers in the order the forward pass calls them; one called twice (shared weights) is refused."""
    calls: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, _a: calls.append(m)) for m in modules]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    twice = [m for m in modules if calls.count(m) > 1]
    if twice:
        raise SingeError(f"prune.reconstruct_batches: cannot refit {names[twice[0]]!r}: it runs {calls.count(twice[0])} "
                         "times in one forward pass (shared weights); set prune.reconstruct_batches=0")
    return list(dict.fromkeys(calls))


def _weight_columns(module: nn.Module, lost: torch.Tensor) -> torch.Tensor:
    """A mask over the flattened weight's columns: True where the column reads a kept input."""
    keep = torch.ones(module.weight.shape[1], dtype=torch.bool)
    keep[lost] = False
    per_input = 1 if isinstance(module, nn.Linear) else module.kernel_size[0] * module.kernel_size[1]
    return keep.repeat_interleave(per_input)


@torch.no_grad()
def reconstruct(model: nn.Module, groups: Sequence[ChannelGroup], channels: Mapping[str, Sequence[int]],
                batches: Batches, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
                seed: int = 0) -> int:
    """Zero the input columns of the channels about to be removed and refit each consumer's kept columns
    (in place); returns the batch forward passes it ran (partial ones counted as whole)."""
    lost = removed_inputs(groups, channels)
    if not lost or not batches:
        return 0
    names = {m: n for n, m in model.named_modules()}
    for module, idx in lost.items():
        _check(names[module], module, idx)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        order = _call_order(model, list(lost), batches[0][0].to(device), names)  # refusals before any change
        original = copy.deepcopy(model)
        for module, idx in lost.items():
            module.weight[:, idx] = 0
        for k, module in enumerate(order):
            _refit(model, original, module, names[module], lost[module], batches, device, all_reduce_sum, seed + k)
    finally:
        model.train(was_training)
    return 1 + len(batches) * 2 * len(order)


def _refit(model: nn.Module, original: nn.Module, module: nn.Module, name: str, lost: torch.Tensor,
           batches: Batches, device: torch.device, all_reduce_sum: Callable | None, seed: int) -> None:
    """Solve ``module``'s kept columns (and bias) by ridge least squares against ``original``'s outputs."""
    twin = dict(original.named_modules())[name]
    keep = _weight_columns(module, lost).to(device)
    bias = module.bias is not None
    gen = torch.Generator().manual_seed(seed)
    positions = max(POSITIONS, math.ceil(4 * (int(keep.sum()) + bias) / sum(len(x) for x, _ in batches)))
    xtx = xty = None
    for x, _ in batches:
        x = x.to(device)
        x_in, _ = _capture(model, module, x)
        _, target = _capture(original, twin, x)
        rows, y = _rows(module, x_in, target, gen, positions)
        rows = rows[:, keep].double()
        if bias:
            rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=device)], 1)
        xtx = rows.T @ rows if xtx is None else xtx + rows.T @ rows
        xty = rows.T @ y.double() if xty is None else xty + rows.T @ y.double()
    both = torch.cat([xtx, xty], 1)
    if all_reduce_sum is not None:
        both = all_reduce_sum(both)
    xtx, xty = both[:, : xtx.shape[1]], both[:, xtx.shape[1]:]
    ridge = RIDGE * xtx.diagonal().mean().clamp_min(1e-12)
    solution = torch.linalg.solve(xtx + ridge * torch.eye(xtx.shape[0], dtype=xtx.dtype, device=device), xty).T
    flat = module.weight.reshape(module.weight.shape[0], -1).clone()  # reshape: channels-last weights too
    flat[:, keep] = solution[:, : int(keep.sum())].to(flat.dtype)  # the other columns: zeroed by reconstruct()
    module.weight.copy_(flat.view(module.weight.shape))
    if bias:
        module.bias.copy_(solution[:, -1].to(module.bias.dtype))
