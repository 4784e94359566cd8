"""The removal path: evaluating ``dL/dmu`` for many (sample, channel, path point) rows.

The gates of :mod:`singe_dist.relevance.groups` scale a group's channels by ``mu``; a *row* is one
sample with one setting of the gates. This module runs rows in chunks of ``criterion.max_rows``
(prefix reuse shares the network before a group's first consumer between a sample's rows), and
adds their gradients to :class:`~singe_dist.relevance.sums.RelevanceSums`. Which rows a criterion
evaluates is its own business (:mod:`singe_dist.relevance.criteria`): a per-batch function handed
to :func:`walk`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from singe_dist import interrupt
from singe_dist.errors import SingeError
from singe_dist.relevance.criterion_config import MAX_OUTPUT_CLASSES, CriterionConfig
from singe_dist.relevance.groups import ChannelGroup, Gates
from singe_dist.relevance.sums import RelevanceSums, path_points

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def _row_losses(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None) -> torch.Tensor:
    if teacher is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return F.kl_div(F.log_softmax(logits, 1), F.log_softmax(teacher, 1), log_target=True, reduction="none").sum(1)


def _output_rows(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``loss="output"``: each row's centred logit of its class, times sqrt(C). Squared and summed over a
    sample's C rows, then divided by the C rows counted, that gives ``sum_c (dz~_c/dmu)^2`` per sample."""
    centred = logits - logits.mean(1, keepdim=True)
    return centred.gather(1, classes.view(-1, 1)).squeeze(1) * logits.shape[1] ** 0.5


def _class_rows(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``loss="output"``: every sample repeated once per class, the class of each copy, and the sample each
    copy came from (its copies share their prefix)."""
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    if classes > MAX_OUTPUT_CLASSES:
        raise SingeError(f"criterion loss=output evaluates one row per class: {classes} classes is over the "
                         f"limit of {MAX_OUTPUT_CLASSES}; use loss=ce or kl")
    n = len(x)
    return (x.repeat_interleave(classes, 0), torch.arange(classes, device=x.device).repeat(n),
            torch.arange(n, device=x.device).repeat_interleave(classes))


class PathEvaluator:
    """Evaluates ``dL/dmu`` for many (sample, channel, path point) rows with per-sample gates.

    *Prefix reuse*: the rows of one sample are identical until the group's first consumer, so that
    prefix of the network runs once per distinct sample of a chunk; its output is repeated for the
    rows at the input of an *expansion point*, the deepest module around the first consumer whose
    input is all the rest of the network reads (found per group, and checked against the plain
    evaluation on the first batch; a group with no such module is evaluated plainly).
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], config: CriterionConfig) -> None:
        self.model = model
        self.groups = groups
        self.config = config
        self.gates = Gates(groups)
        self.device = next(model.parameters()).device
        self._points: dict[str, nn.Module | None] = {}  # group id -> expansion point (None: no reuse)
        self.origin: torch.Tensor | None = None  # sample -> the distinct input it copies (loss=output), if any
        self._order: list[nn.Module] | None = None

    def _call_order(self, x: torch.Tensor) -> list[nn.Module]:
        """Modules in the order a forward pass calls them (one entry per call)."""
        if self._order is None:
            order: list[nn.Module] = []
            handles = [m.register_forward_pre_hook(lambda mod, _args: order.append(mod)) for m in self.model.modules()]
            try:
                with torch.no_grad():
                    self.model(x[:1])
            finally:
                for h in handles:
                    h.remove()
            self._order = order
        return self._order

    def expansion_point(self, group: ChannelGroup, x, y, teacher) -> nn.Module | None:  # noqa: ANN001
        """The module at whose input a group's rows are expanded, or None; found once per group."""
        if group.id in self._points:
            return self._points[group.id]
        self._points[group.id] = None
        if not self.config.prefix_reuse or len(x) < 2:
            return None
        order = self._call_order(x)
        consumers = {m.module for m in group.consumers}
        first = next((m for m in order if m in consumers), None)
        if first is None:
            return None
        names = {m: n for n, m in self.model.named_modules()}
        modules = dict(self.model.named_modules())
        name = names[first]
        candidates = []
        while name:
            candidates.append(modules[name])
            name = name.rpartition(".")[0]
        # a trial on two samples with two rows each and random gates: the reuse must give the plain gradients.
        # The two are distinct inputs to the trial even where they are copies of one (loss=output): a tensor
        # of the prefix read after the point then has 2 rows against 4 and fails, instead of broadcasting.
        gen = torch.Generator().manual_seed(0)
        sample = torch.tensor([0, 0, 1, 1], device=self.device)
        gate = torch.rand(4, group.size, generator=gen).to(self.device)
        origin, self.origin = self.origin, None
        try:
            plain = self.rows(x, y, teacher, sample, {group.id: gate.clone()})[group.id]
            scale = float(plain.abs().max()) or 1.0
            for module in candidates:
                if order.count(module) != 1:
                    continue
                try:
                    trial = self.rows(x, y, teacher, sample, {group.id: gate.clone()}, expand_at=module)[group.id]
                except (RuntimeError, TypeError):  # a prefix tensor read after the point, or an input that is no tensor
                    continue
                if torch.allclose(trial, plain, rtol=1e-4, atol=1e-5 * scale):
                    self._points[group.id] = module
                    break
        finally:
            self.origin = origin
        return self._points[group.id]

    def rows(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        teacher: torch.Tensor | None,
        sample_idx: torch.Tensor,
        gate_values: dict[str, torch.Tensor],
        expand_at: nn.Module | None = None,
    ) -> dict[str, torch.Tensor]:
        """Gradients of the summed loss of the rows with respect to each group's gate matrix.

        ``expand_at``: run the network on the distinct samples and repeat them per row at this
        module's input (prefix reuse); None runs every row through the whole network.
        """
        for g in gate_values.values():
            g.requires_grad_(True)
        handle = None
        inputs = x[sample_idx]
        if expand_at is not None:
            key = sample_idx if self.origin is None else self.origin[sample_idx]
            distinct, inverse = torch.unique(key, return_inverse=True)
            rows = torch.arange(len(key), device=key.device)
            first = torch.full_like(distinct, len(key)).scatter_reduce(0, inverse, rows, "amin")
            inputs = x[sample_idx[first]]  # one row per distinct input
            handle = expand_at.register_forward_pre_hook(lambda _m, args: (args[0][inverse],) + tuple(args[1:]))
        try:
            with self.gates.active(gate_values):
                logits = self.model(inputs)
        finally:
            if handle is not None:
                handle.remove()
        if self.config.loss == "output":
            losses = _output_rows(logits, y[sample_idx])
        else:
            losses = _row_losses(logits, y[sample_idx], None if teacher is None else teacher[sample_idx])
        total = losses.sum()
        if not torch.isfinite(total):
            raise SingeError("non-finite loss during relevance estimation (check the data, labels and checkpoint)")
        grads = torch.autograd.grad(total, list(gate_values.values()))
        return dict(zip(gate_values, grads))



def walk(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Batches,
    config: CriterionConfig,
    sums: RelevanceSums,
    batch_rows: Callable[[PathEvaluator, torch.Tensor, torch.Tensor, torch.Tensor | None, RelevanceSums], None],
    progress: object | None = None,
) -> RelevanceSums:
    """Add what ``batch_rows`` evaluates on every batch to ``sums``, with the plain loss and sample count.

    BatchNorm runs on its running statistics (eval mode) and parameters are frozen, so only the
    gradients the criterion needs are computed.
    """
    if sums.squared != (config.reduce == "norm"):
        raise SingeError(f"relevance sums to add to do not match criterion reduce={config.reduce}")
    evaluator = PathEvaluator(model, groups, config)
    with frozen(model):
        for x, y in batches:
            x, y = x.to(evaluator.device, non_blocking=True), y.to(evaluator.device, non_blocking=True)
            teacher = None
            if config.loss == "kl":
                with torch.no_grad():
                    teacher = model(x)
            rows_x, rows_y = x, y
            if config.loss == "output":
                rows_x, rows_y, evaluator.origin = _class_rows(model, x)
            batch_rows(evaluator, rows_x, rows_y, teacher, sums)
            with torch.no_grad():
                plain = _row_losses(model(x), y, teacher)
            sums.loss_sum += float(plain.sum())
            sums.samples += len(x)
            if progress is not None:
                progress.update(len(x))  # type: ignore[attr-defined]
    if sums.samples == 0:
        raise SingeError("calibration data is empty: no batch was read")
    return sums


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm on running statistics: the deployed function) and frozen weights, restored after."""
    was_training = model.training
    requires = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        model.train(was_training)
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)


def _chunks(n_rows: int, max_rows: int) -> Iterable[torch.Tensor]:
    """Row indices in passes of at most ``max_rows``; a stop request is honoured between passes."""
    for start in range(0, n_rows, max_rows):
        interrupt.check()  # one calibration batch of the channel path is minutes of passes on a large model
        yield torch.arange(start, min(n_rows, start + max_rows))


def _per_sample(grad: torch.Tensor, sums: RelevanceSums) -> torch.Tensor:
    """What a row adds to the sums: its derivative, or its square for ``reduce="norm"`` (one sample per row)."""
    return grad.square() if sums.squared else grad


def taylor_batch(ev: PathEvaluator, x, y, teacher, sums: RelevanceSums) -> None:
    """All groups at mu = 1 at once: one pass gives every group's first-order derivative."""
    n = len(x)
    for rows in _chunks(n, ev.config.max_rows):
        gates = {g.id: torch.ones(len(rows), g.size, device=ev.device) for g in ev.groups}
        grads = ev.rows(x, y, teacher, rows.to(ev.device), gates)
        for gid, grad in grads.items():
            sums.sums[gid][0] += _per_sample(grad, sums).sum(0).double().cpu()
            sums.counts[gid][0] += len(rows)


def group_path_batch(ev: PathEvaluator, x, y, teacher, sums: RelevanceSums) -> None:
    """Each group walks its path with all its channels together: rows = (sample, point), points fastest."""
    n, s_count = len(x), len(sums.points)
    mu = sums.points.to(ev.device, torch.float32)
    for g in ev.groups:
        point_of_reuse = ev.expansion_point(g, x, y, teacher)
        for rows in _chunks(n * s_count, ev.config.max_rows):
            sample, point = rows // s_count, rows % s_count
            gate = mu[point.to(ev.device)].unsqueeze(1).expand(len(rows), g.size).contiguous()
            grad = ev.rows(x, y, teacher, sample.to(ev.device), {g.id: gate},
                           expand_at=point_of_reuse)[g.id]
            sums.sums[g.id].index_add_(0, point, _per_sample(grad, sums).double().cpu())
            sums.counts[g.id].index_add_(0, point, torch.ones(len(rows), g.size, dtype=torch.float64))


def channel_path_batch(ev: PathEvaluator, x, y, teacher, sums: RelevanceSums, share: tuple[int, int]) -> None:
    """Each channel walks its own path, the others at mu = 1: rows = (sample, channel, point), samples slowest."""
    n, s_count = len(x), len(sums.points)
    mu = sums.points.to(ev.device, torch.float32)
    rank, world = share
    for g in ev.groups:
        pairs = torch.arange(g.size * s_count)
        pairs = pairs[pairs % world == rank]  # pair p = channel * S + point
        point_of_reuse = ev.expansion_point(g, x, y, teacher)
        for rows in _chunks(n * len(pairs), ev.config.max_rows):
            sample, pair = rows // len(pairs), pairs[rows % len(pairs)]
            channel, point = pair // s_count, pair % s_count
            gate = torch.ones(len(rows), g.size, device=ev.device)
            dev_r = torch.arange(len(rows), device=ev.device)
            gate[dev_r, channel.to(ev.device)] = mu[point.to(ev.device)]
            grad = ev.rows(x, y, teacher, sample.to(ev.device), {g.id: gate}, expand_at=point_of_reuse)[g.id]
            picked = _per_sample(grad[dev_r, channel.to(ev.device)], sums).double().cpu()
            flat_sums = sums.sums[g.id].view(-1)  # (S, K) row-major: index = point * K + channel
            flat_counts = sums.counts[g.id].view(-1)
            index = point * g.size + channel
            flat_sums.index_add_(0, index, picked)
            flat_counts.index_add_(0, index, torch.ones(len(rows), dtype=torch.float64))


def planned_path_sums(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    config: CriterionConfig,
    planned: Mapping[str, Sequence[int]],
) -> RelevanceSums:
    """SInGE along the path to the removal a step plans: every planned channel of every group goes together.

    The single-channel path answers "what does removing k alone cost"; a step removes many channels
    at once, and channels that are each redundant can be jointly essential. Here all planned channels
    walk from mu = 1 to mu = 0 together (the others stay at 1), and each one's integrated gradient is
    its share of the *joint* loss increase: by completeness the shares of the plan add up to
    ``L(plan removed) - L(intact)``. One pass per (sample, point) for all groups at once, so it costs
    S passes per sample, a group path's cost for a single group. Sums and counts, like
    :func:`accumulate` (ranks all-reduce them); :func:`planned_scores` turns them into scores.
    """
    points, weights = path_points(config.steps, config.rule)
    sums = RelevanceSums.empty(groups, points, weights)
    evaluator = PathEvaluator(model, groups, config)
    moving = {g.id: torch.as_tensor(list(planned.get(g.id, [])), dtype=torch.long) for g in groups}
    moving = {gid: idx for gid, idx in moving.items() if len(idx)}
    mu = points.to(evaluator.device, torch.float32)
    by_id = {g.id: g for g in groups}
    with frozen(model):
        for x, y in batches:
            x, y = x.to(evaluator.device), y.to(evaluator.device)
            teacher = None
            if config.loss == "kl":
                with torch.no_grad():
                    teacher = model(x)
            n, s_count = len(x), len(points)
            for rows in _chunks(n * s_count, config.max_rows):
                sample, point = rows // s_count, rows % s_count
                gates = {}
                for gid, idx in moving.items():
                    gate = torch.ones(len(rows), by_id[gid].size, device=evaluator.device)
                    gate[:, idx.to(evaluator.device)] = mu[point.to(evaluator.device)].unsqueeze(1)
                    gates[gid] = gate
                grads = evaluator.rows(x, y, teacher, sample.to(evaluator.device), gates)
                for gid, grad in grads.items():
                    sums.sums[gid].index_add_(0, point, grad.double().cpu())
            for g in groups:
                sums.counts[g.id] += n
            sums.samples += n
    if sums.samples == 0:
        raise SingeError("calibration data is empty: no batch was read")
    return sums


def planned_scores(sums: RelevanceSums, planned: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Each planned channel's share of the joint loss increase; NaN for channels outside the plan."""
    scores = sums.finalize("signed")
    for gid, score in scores.items():
        outside = torch.ones(len(score), dtype=torch.bool)
        outside[torch.as_tensor(list(planned.get(gid, [])), dtype=torch.long)] = False
        score[outside] = float("nan")  # they did not move on this path: no share to report
    return scores

