"""Plain supervised training and exact evaluation, shared by baselines, fine-tuning and the demo (with the
device choice and the progress display they share)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from singe_dist import interrupt
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
            interrupt.check()
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
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches``; return the batches used.

    Removing channels changes the statistics of the layers after them, and running statistics from
    before the removal can wreck the pruned network although its weights are fine; a few batches of
    forward passes repair that without any training (docs/BENCHMARKS.md, quality). As in
    ``torch.optim.swa_utils.update_bn``, each layer's statistics are the average over batches of the
    batch mean and unbiased batch variance, with the network in training mode for the pass (every
    layer normalises with its batch statistics, so no layer depends on another's estimate). The
    per-batch sums are float64 and ``all_reduce_sum`` (a collective's) adds those of every rank, so
    all ranks set exactly the statistics one process would compute from all their batches. Only
    ``running_mean`` and ``running_var`` change.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    sums = {m: torch.zeros(2, m.num_features, dtype=torch.float64) for m in norms}

    def capture(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        sums[module][0] += x.mean(dims).cpu()
        sums[module][1] += x.var(dims, unbiased=True).cpu()

    saved = [(m, m.momentum, m.training, m.num_batches_tracked.clone()) for m in norms]
    was_training = model.training
    handles = [m.register_forward_pre_hook(capture) for m in norms]
    model.train()
    for m in norms:
        m.momentum = 0.0  # the module's own update leaves its statistics as they are; the hook measures
    device = next(model.parameters()).device
    count = 0
    try:
        for x, _ in batches:
            interrupt.check()
            model(x.to(device))
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        for m, momentum, training, tracked in saved:
            m.momentum = momentum
            m.train(training)
            m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    flat = torch.cat([sums[m].flatten() for m in norms] + [torch.tensor([float(count)], dtype=torch.float64)])
    return _set_statistics(norms, all_reduce_sum(flat) if all_reduce_sum is not None else flat)


def _set_statistics(norms: list[nn.modules.batchnorm._BatchNorm], flat: torch.Tensor) -> int:
    """Each layer's running mean and variance from the (all-reduced) sums; the number of batches."""
    total = int(round(float(flat[-1])))
    if total == 0:
        raise SingeError("BatchNorm re-estimation read no batch: the calibration data is empty")
    offset = 0
    for m in norms:
        n = m.num_features
        m.running_mean.copy_((flat[offset : offset + n] / total).to(m.running_mean))
        m.running_var.copy_((flat[offset + n : offset + 2 * n] / total).to(m.running_var))
        offset += 2 * n
    return total


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


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's distillation term: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean.

    The ``T^2`` keeps its gradients on the scale of the cross-entropy's whatever the temperature.
    """
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, 1), F.log_softmax(teacher.float() / t, 1), log_target=True,
                    reduction="batchmean") * (t * t)


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float | Callable[[int], float],
    label_smoothing: float = 0.0,
    first_step: int = 0,
    total_steps: int | None = None,
    on_step: object | None = None,
    amp: bool = False,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
) -> float:
    """Run ``steps`` SGD iterations drawn from ``batches``; return the mean loss.

    ``lr`` is a peak rate decayed by a cosine over ``total_steps``, or a schedule (``engine.lr.LrSchedule``):
    iteration ``first_step + i`` runs at ``lr(first_step + i)``.

    ``amp``: bfloat16 autocast on GPU (no loss scaling needed); ignored on CPU. With a ``teacher``
    (the unpruned model, in eval mode) and ``distill_weight = w``, the loss is
    ``(1 - w) * CE + w * distillation_loss``: one teacher forward per batch.
    """
    if teacher is not None:
        teacher.eval()
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    total_steps = total_steps or steps
    model.train()
    running, seen = 0.0, 0
    for i in range(steps):
        interrupt.check()
        try:
            x, y = next(batches)
        except StopIteration:
            raise SingeError("training data ran out: use a resampled (infinite) training stream") from None
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr(first_step + i) if callable(lr) else cosine_lr(lr, first_step + i, total_steps)
        with autocast:
            logits = model(x).float()
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            if teacher is not None and distill_weight > 0:
                with torch.no_grad():
                    target = teacher(x).float()
                loss = (1 - distill_weight) * loss + distill_weight * distillation_loss(logits, target, temperature)
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


def pick_device(kind: str, rank: int) -> torch.device:
    """``run.device``: a GPU per rank (round robin over the visible ones) or the CPU."""
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SingeError("run.device is 'cuda' but no GPU is visible")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


class Progress:
    """A tqdm bar on a terminal, a log line every ``every`` iterations otherwise (cluster logs)."""

    def __init__(self, total: int, desc: str, log: Callable[[str], None], every: int, enabled: bool) -> None:
        self.desc, self.log, self.every, self.total = desc, log, every, total
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)
        self.enabled = enabled

    def __call__(self, iteration: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        elif self.enabled and ((iteration + 1) % self.every == 0 or iteration + 1 == self.total):
            self.log(f"      {self.desc}: iteration {iteration + 1}/{self.total} loss {loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
