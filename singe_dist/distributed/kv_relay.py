"""The key-value relay between the driver and its Ray Train workers, through Ray's internal key-value store.

Workers cannot reach the driver any other way while ``TorchTrainer.fit`` runs, and the driver must
know three things before the job ends: that every worker started (the start watchdog), when it may
let them begin (the demo's inputs are prepared while the worker group starts), and rank 0's progress
lines (a local runtime's workers do not print to the driver). Every key of a launch lies under its
own token (``run-<uuid>``), so launches never read each other's keys; this module owns that layout:

* ``<token>/started/<rank>``: the worker's start time (``time.time()``), for ``launch_s``;
* ``<token>/go``: the driver's signal that the inputs are ready;
* ``<token>/log/<ns>-<pid>-<count>``: one progress line of rank 0, deleted once printed.

Ray is imported inside the functions: the driver imports this module before it connects, and Ray
must not be imported before the environment it reads at import is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

KV_NAMESPACE = "singe-dist"


def _put(key: str, value: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, value, namespace=KV_NAMESPACE)


def _keys(prefix: str) -> list[str]:
    from ray.experimental.internal_kv import _internal_kv_list

    return sorted(k.decode() for k in _internal_kv_list(prefix, namespace=KV_NAMESPACE))


# ------------------------------------------------------------------------------------------ worker side
def check_in(token: str, rank: int) -> None:
    """Tell the driver's start watchdog that this worker runs, and when it began (for ``launch_s``)."""
    _put(f"{token}/started/{rank}", f"{time.time()}")


def wait_for_go(token: str) -> None:
    """Block until the driver says the inputs are ready (it prepares them while the worker group starts)."""
    from ray.experimental.internal_kv import _internal_kv_get

    while _internal_kv_get(f"{token}/go", namespace=KV_NAMESPACE) is None:
        time.sleep(0.2)


class LogRelay:
    """Rank 0's ``log`` on a local runtime: print to the worker's log file, and hand the line to the driver."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.count = 0

    def __call__(self, message: str) -> None:
        print(message, flush=True)
        try:  # keys sort by time, also across a restarted worker group; the driver deletes what it printed
            _put(f"{self.token}/log/{time.time_ns():020d}-{os.getpid()}-{self.count:09d}", message)
            self.count += 1
        except Exception:  # noqa: BLE001 - progress lines must never stop the job
            pass


# ------------------------------------------------------------------------------------------ driver side
def give_go(token: str) -> None:
    """Let the workers waiting in :func:`wait_for_go` begin the job."""
    _put(f"{token}/go", "1")


def checked_in(token: str) -> list[str]:
    """The keys of the workers that have called :func:`check_in` so far."""
    return _keys(f"{token}/started/")


def last_check_in(keys: list[str]) -> float:
    """When the last of these workers began (``time.time()``): the worker group's start, for ``launch_s``."""
    from ray.experimental.internal_kv import _internal_kv_get

    return max(float(_internal_kv_get(key, namespace=KV_NAMESPACE) or 0) for key in keys)


def relay_log(token: str, log: Callable[[str], None]) -> None:
    """Print (and delete) rank 0's progress lines that arrived since the last call."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get

    try:
        keys = _keys(f"{token}/log/")
        for key in keys:
            value = _internal_kv_get(key, namespace=KV_NAMESPACE)
            _internal_kv_del(key, namespace=KV_NAMESPACE)
            if value is not None:
                log(value.decode())
    except Exception:  # noqa: BLE001 - the runtime is going away: its last lines are in the workers' logs
        return
