"""Who reads which shard: one reader slot per (rank, DataLoader worker), and each slot's share.

**Evaluation** must count every sample once, over all ranks and DataLoader workers together.
Splitting by whole shards (``split_by_node`` then ``split_by_worker``) cannot: with fewer shards than
rank x worker slots some slots get none, and uneven shard counts leave ranks with duplicates or gaps
depending on padding. So shards are dealt round-robin to the ``world_size x num_workers`` slots in
whole rounds, and each shard of the last, incomplete round is shared by the slots that got no whole
shard, each keeping the samples whose index in the shard is its residue modulo the number of sharers.
Every rank must use the same number of DataLoader workers. Ranks may hold different numbers of
batches; evaluation code must reduce sums and counts after the loop rather than collectively per batch.

**Training** needs no share: every slot draws shards with replacement, seeded by its slot number so
that no two readers draw the same sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch.distributed as dist
from torch.utils.data import get_worker_info

from singe_dist.errors import SingeError


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values win; otherwise torch.distributed's when it is initialised, else (0, 1)."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if not 0 <= rank < world_size:
        raise SingeError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


def slot_parts(num_shards: int, slot: int, num_slots: int) -> list[tuple[int, int, int]]:
    """What one of ``num_slots`` readers reads: (shard index, stride, offset) triples.

    The slot keeps the samples of that shard whose index modulo stride is offset. Whole rounds of
    shards are dealt round-robin; each shard of the incomplete last round is split by sample index
    among the slots ``s`` with ``s % rest == its position``. Over all slots, every sample once.
    """
    whole = num_shards - num_shards % num_slots
    parts = [(shard, 1, 0) for shard in range(slot, whole, num_slots)]
    rest = num_shards - whole
    if rest:
        position = slot % rest
        parts.append((whole + position, len(range(position, num_slots, rest)), slot // rest))
    return parts


def reader_slot(rank: int, world_size: int) -> tuple[int, int]:
    """(this reader's slot, number of slots): one slot per (rank, DataLoader worker).

    Called inside the reading process: a DataLoader worker learns its number only once it runs.
    """
    info = get_worker_info()
    worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
    return rank * workers + worker, world_size * workers


def eval_parts(urls: list[str], rank: int, world_size: int) -> Iterator[dict[str, Any]]:
    """Pipeline source for evaluation: this slot's share of the shards (see :func:`slot_parts`)."""
    for shard, stride, offset in slot_parts(len(urls), *reader_slot(rank, world_size)):
        yield {"url": urls[shard], "stride": stride, "offset": offset}


def slot_seed(rank: int, world_size: int) -> int:
    """Per (rank, worker) seed for ResampledShards, so that every reader draws its own shard sequence."""
    return reader_slot(rank, world_size)[0]


__all__ = ["eval_parts", "reader_slot", "resolve_rank", "slot_parts", "slot_seed"]
