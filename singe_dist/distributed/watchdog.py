"""The start watchdog: a worker group that does not start ends the job with one line, in bounded time.

Ray retries a worker process that cannot start (a missing Python, a runtime environment that fails to
build) without telling the driver, and ``TorchTrainer.fit`` would wait forever. So the driver counts
the workers that checked in through the key-value relay and, after ``distributed.start_timeout_s``,
stops with what Ray said: the local runtime's raylet logs name the cause; on a cluster they are out
of reach and the line says that nothing checked in.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from singe_dist.config import DistributedConfig
from singe_dist.distributed.kv_relay import checked_in, last_check_in
from singe_dist.errors import SingeError


class StartWatchdog:
    """Watches one launch's workers check in; the clock starts when it is made (just before ``fit()``)."""

    def __init__(self, token: str, distributed: DistributedConfig, local: bool) -> None:
        self.token = token
        self.num_workers = distributed.num_workers
        self.timeout_s = distributed.start_timeout_s
        self.local = local
        self.t0, self.wall0 = time.perf_counter(), time.time()
        self.workers_start_s: float | None = None  # seconds until the last worker began, once all have

    def poll(self, starting: Callable[[], bool]) -> None:
        """Note when every worker has checked in; past the timeout, raise the one-line start failure.

        ``starting`` says whether ``fit()`` still runs: one that ended has its own error to report.
        """
        if self.workers_start_s is not None:
            return
        keys = checked_in(self.token)
        if len(keys) >= self.num_workers:
            self.workers_start_s = last_check_in(keys) - self.wall0
        elif time.perf_counter() - self.t0 > self.timeout_s and starting():
            cause = start_failure_cause(self.local)
            raise SingeError(f"the {self.num_workers} Ray Train workers did not start within "
                             f"distributed.start_timeout_s={self.timeout_s:g} s ({cause}); check that the "
                             "workers' Python environment starts (docs/CLUSTER.md) or raise the timeout")


def start_failure_cause(local: bool) -> str:
    """What Ray said about workers that do not start: the local runtime's logs, else the actors' state."""
    if local:
        try:
            from ray._private.worker import _global_node

            logs = Path(_global_node.get_logs_dir_path())
            found = worker_start_errors(logs)
            if found:
                return f"Ray: {found}"
        except Exception:  # noqa: BLE001 - best effort, the timeout itself is the news
            pass
    return "no worker process checked in; Ray reported no error to this driver"


def worker_start_errors(logs: Path) -> str | None:
    """The last error of a worker process that died while starting, from the raylet's logs."""
    lines: list[str] = []
    for name in ("raylet.err", "raylet.out"):
        path = logs / name
        if path.is_file():
            lines += path.read_text(errors="replace").splitlines()
    died = [line for line in lines if "have not registered within the timeout" in line]
    errors = [line.strip() for line in lines if re.search(r"No such file|not found|Permission denied|Error", line)
              and "have not registered" not in line]
    if errors:
        return errors[-1][:300]
    if died:
        return re.sub(r"^\[[^]]*\]\s*", "", died[-1]).strip()[:300]
    return None
