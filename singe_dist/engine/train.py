"""Plain supervised training and exact evaluation, shared by baselines, fine-tuning and the demo."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from singe_dist.errors import SingeError


@dataclass(frozen=True)
class EvalResult:
    """Top-1 / top-5 accuracy (fractions) and mean cross-entropy over exactly ``samples`` samples."""

    top1: float
    top5: float
    loss: float
    samples: int

    def as_dict(self) -> dict[str, float]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "samples": self.samples}


def eval_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``[correct@1, correct@5, loss sum, samples]`` as float64: shares of the data add exactly."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    with torch.no_grad():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top == y.unsqueeze(1)
            totals += torch.tensor(
                [hit[:, 0].sum().item(), hit.any(1).sum().item(), F.cross_entropy(logits.float(), y, reduction="sum").item(), len(y)],
                dtype=torch.float64,
            )
    model.train(was_training)
    return totals


def result_from_sums(totals: torch.Tensor) -> EvalResult:
    samples = int(totals[3])
    if samples == 0:
        raise SingeError("validation data is empty: no sample was evaluated")
    return EvalResult(top1=float(totals[0]) / samples, top5=float(totals[1]) / samples,
                      loss=float(totals[2]) / samples, samples=samples)


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> EvalResult:
    """Accuracy and loss of ``model`` on every batch (eval mode, no gradient)."""
    return result_from_sums(eval_sums(model, batches))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (a cumulative average).

    Removing channels changes the statistics of the layers after them, and running statistics from
    before the removal can wreck the pruned network although its weights are fine; a few hundred
    images of forward passes repair that without any training (see docs/BENCHMARKS.md, quality).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.training) for m in norms]
    was_training = model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    device = next(model.parameters()).device
    try:
        for x, _ in batches:
            model(x.to(device))
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
        model.train(was_training)


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """SGD with momentum; no weight decay on biases and norm layers (the torchvision recipe)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, momentum=momentum, nesterov=momentum > 0,
    )


def cosine_lr(base_lr: float, step: int, total: int, warmup: int = 0) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up then cosine decay to zero."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    label_smoothing: float = 0.0,
    first_step: int = 0,
    total_steps: int | None = None,
    on_step: object | None = None,
    amp: bool = False,
) -> float:
    """Run ``steps`` SGD iterations drawn from ``batches`` with a cosine schedule; return the mean loss.

    ``amp``: bfloat16 autocast on GPU (no loss scaling needed); ignored on CPU.
    """
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    total_steps = total_steps or steps
    model.train()
    running, seen = 0.0, 0
    for i in range(steps):
        try:
            x, y = next(batches)
        except StopIteration:
            raise SingeError("training data ran out: use a resampled (infinite) training stream") from None
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, first_step + i, total_steps)
        with autocast:
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise SingeError(f"non-finite training loss at iteration {first_step + i}: lower the learning rate or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        running += value
        seen += 1
        if on_step is not None:
            on_step(first_step + i, value)  # type: ignore[operator]
    return running / max(1, seen)


def tensor_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0, repeat: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of in-memory tensors; ``repeat`` reshuffles forever (a training stream)."""
    if len(x) == 0:
        raise SingeError("data is empty: no samples to iterate")
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=gen) if shuffle else torch.arange(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
        if not repeat:
            return
