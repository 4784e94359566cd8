"""The random number generators a run uses (torch, numpy, Python's ``random``): seeding and state.

Every phase of a job starts from a seed of its own (:func:`seed_phase`), so a run resumed at a phase
boundary replays the same randomness. A checkpoint taken in the middle of a phase holds every
generator's state (:func:`rng_state`, plain containers and a tensor, readable with
``weights_only=True``); :func:`restore_rng` puts all three back, so the resumed phase continues the
same sequences.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_phase(seed: int, step: int, rank: int) -> None:
    """Every phase starts from a seed of its own: a resumed run replays the same randomness."""
    s = (seed * 1_000_003 + step * 101 + rank) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def rng_state() -> dict[str, Any]:
    """The state of torch's, numpy's and Python's global generators, as checkpoint-safe values."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved.

    Checkpoints written before numpy's and Python's states were kept whole (numpy's key array only,
    Python's as a ``repr``) restore torch's generator alone, as they always did.
    """
    torch.set_rng_state(state["torch"])
    numpy_state = state.get("numpy")
    if isinstance(numpy_state, dict):
        np.random.set_state((numpy_state["kind"], np.array(numpy_state["keys"], dtype=np.uint32), numpy_state["pos"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state.get("python")
    if isinstance(python_state, dict):
        random.setstate((python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"]))
