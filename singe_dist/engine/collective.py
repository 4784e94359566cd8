"""The few collective operations the pruning loop needs, for one process or a torch process group.

The loop is written once against :class:`Collective`: with :class:`LocalCollective` it runs in one
process (tests, debugging, laptops); with :class:`TorchCollective` the same code runs on every Ray
Train worker, where relevance sums, evaluation counts and plan hashes cross ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from singe_dist.errors import SingeError

if TYPE_CHECKING:
    from singe_dist.plan.plan import Plan


class Collective(Protocol):
    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def all_gather_object(self, obj: Any) -> list[Any]: ...

    def barrier(self) -> None: ...

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train (DDP-wrapped when distributed)."""
        ...

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Every rank takes rank 0's buffers (BatchNorm running statistics), after training.

        DDP broadcasts rank 0's buffers at the start of each forward, so after a phase's last step every
        rank holds the statistics of its own last batch. Without this the ranks would evaluate, score and
        checkpoint different models, and a run resumed from rank 0's checkpoint would not be the run that
        went on.
        """
        ...


class LocalCollective:
    """World size 1: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        return None

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def broadcast_buffers(self, model: nn.Module) -> None:
        return None


class TorchCollective:
    """An initialised ``torch.distributed`` process group (Gloo on CPU, NCCL on GPU)."""

    def __init__(self, device: torch.device) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = device
        # NCCL reduces tensors on the GPU; Gloo on the CPU
        self._reduce_device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        work = tensor.to(self._reduce_device).clone()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.to(tensor.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def broadcast_buffers(self, model: nn.Module) -> None:
        with torch.no_grad():
            for buffer in model.buffers():
                work = buffer.to(self._reduce_device)  # the buffer itself on Gloo's CPU and NCCL's GPU
                dist.broadcast(work, src=0)
                if work is not buffer:
                    buffer.copy_(work)


def assert_same_plan(collective: Collective, plan: Plan) -> None:
    """All ranks must hold the same plan: compare hashes (all-gather) and stop loudly if any differs.

    Ranks never prune independently; a difference means their relevance or model state diverged,
    and continuing would train mismatched replicas under DDP.
    """
    digests = collective.all_gather_object(plan.digest())
    if len(set(digests)) != 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise SingeError(f"ranks took different pruning decisions (rank(s) {bad} differ from rank 0): "
                         "relevance or model state diverged; stopping")
