"""Fault injection, for tests (docs/RELIABILITY.md, fault matrix); a job without it pays nothing.

``SINGE_DIST_FAIL_AT="<phase>:<k>[:<rank>]"`` makes rank ``<rank>`` (every rank when omitted) fail once,
in pruning step k (1-based, as in the logs):

- ``relevance:k``   during step k's relevance: the local sums are computed, not yet all-reduced
- ``finetune:k``    in the middle of step k's fine-tuning, after iteration F // 2 + 1 of its F
  (k = prune.steps + 1: the final fine-tune)
- ``checkpoint:k``  while rank 0 writes the checkpoint that closes step k (k = 0: the one after the
  baseline evaluation; k = prune.steps + 1: the last one): half of the temporary file is written and
  flushed, it is never renamed over the previous checkpoint
- ``step:k``        right after the checkpoint that closes step k

``SINGE_DIST_FAIL_MODE=raise`` (default) raises a RuntimeError (a crash inside Python, the job's own
error handling runs); ``=exit`` ends the process at once with ``os._exit(17)``, as a kill would. A
marker file ``.fault-injected-<phase>-<k>`` in the run directory makes a fault fire once: Ray restarts
a worker group with the same environment. The older ``SINGE_DIST_FAIL_AT_STEP="k[:rank]"`` is
``step:k[:rank]``.

:func:`injector_from_env` gives the job :data:`NO_FAULTS` when neither variable is set: its checks do
nothing and the checkpoint is written by the ordinary writer.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from singe_dist.errors import SingeError

FAIL_AT_ENV = "SINGE_DIST_FAIL_AT"
FAIL_ENV = "SINGE_DIST_FAIL_AT_STEP"
FAIL_MODE_ENV = "SINGE_DIST_FAIL_MODE"
FAIL_PHASES = ("relevance", "finetune", "checkpoint", "step")
FAIL_EXIT_CODE = 17

Writer = Callable[[Any, Path], None]


@dataclass(frozen=True)
class Fault:
    """A fault to inject (see ``FAIL_AT_ENV``): ``phase`` of step ``step``, on ``rank`` (None: all ranks)."""

    phase: str
    step: int
    rank: int | None = None


def fault_from_env(environ: Mapping[str, str] | None = None) -> Fault | None:
    """The fault that ``SINGE_DIST_FAIL_AT`` (or the older ``SINGE_DIST_FAIL_AT_STEP``) asks for, if any."""
    environ = os.environ if environ is None else environ
    spec = environ.get(FAIL_AT_ENV)
    if spec:
        name, fields = FAIL_AT_ENV, spec.split(":")
    elif environ.get(FAIL_ENV):
        spec = environ[FAIL_ENV]
        name, fields = FAIL_ENV, ["step", *spec.split(":")]
    else:
        return None
    try:
        if fields[0] not in FAIL_PHASES or not 2 <= len(fields) <= 3:
            raise ValueError
        return Fault(fields[0], int(fields[1]), int(fields[2]) if len(fields) == 3 else None)
    except ValueError:
        raise SingeError(f"{name}={spec!r}: expected <phase>:<step>[:<rank>] with phase one of "
                         f"{', '.join(FAIL_PHASES)}") from None


class NoFaults:
    """No fault asked for: every check is a no-op and checkpoints go to the ordinary writer."""

    def check(self, phase: str, step: int, detail: str = "") -> None:
        return None

    def checkpoint_writer(self, step: int | None) -> Writer | None:
        """The writer of the checkpoint that closes ``step``: None, the ordinary one."""
        return None


NO_FAULTS = NoFaults()


class FaultInjector(NoFaults):
    """Fires ``fault`` once, on this rank, at the point of the schedule it names."""

    def __init__(self, fault: Fault, run_dir: Path, rank: int, log: Callable[[str], None]) -> None:
        self.fault, self.run_dir, self.rank, self.log = fault, run_dir, rank, log

    def _marker(self, phase: str, step: int) -> Path:
        return self.run_dir / f".fault-injected-{phase}-{step}"

    def due(self, phase: str, step: int) -> bool:
        """Is the injected fault this one, on this rank, and not fired yet?"""
        f = self.fault
        return (f.phase == phase and f.step == step and f.rank in (None, self.rank)
                and not self._marker(phase, step).exists())

    def check(self, phase: str, step: int, detail: str = "") -> None:
        if self.due(phase, step):
            self.fail(phase, step, detail)

    def fail(self, phase: str, step: int, detail: str = "") -> None:
        self._marker(phase, step).touch()
        where = {"step": f"after step {step}", "relevance": f"during the relevance of step {step}",
                 "finetune": f"during the fine-tuning of step {step}",
                 "checkpoint": f"while writing the checkpoint of step {step}"}[phase] + detail
        self.log(f"fault injection: rank {self.rank} fails {where}")
        if os.environ.get(FAIL_MODE_ENV, "raise") == "exit":
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(FAIL_EXIT_CODE)
        raise RuntimeError(f"fault injection: rank {self.rank} failed {where}")

    def checkpoint_writer(self, step: int | None) -> Writer | None:
        """For the checkpoint fault of ``step``, a writer that fails half-way, before the rename."""
        if step is None or not self.due("checkpoint", step):
            return None

        def torn_write(payload: Any, path: Path) -> None:
            import torch

            from singe_dist.atomic import atomic_write

            buffer = io.BytesIO()
            torch.save(payload, buffer)
            data = buffer.getvalue()

            def half_then_fail(fh: Any) -> None:
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                self.fail("checkpoint", step, f" ({len(data) // 2} of {len(data)} bytes written)")

            atomic_write(path, half_then_fail)

        return torn_write


def injector_from_env(run_dir: Path, rank: int, log: Callable[[str], None]) -> NoFaults:
    """The job's fault injector: :data:`NO_FAULTS` unless ``SINGE_DIST_FAIL_AT`` (or ``_AT_STEP``) is set."""
    fault = fault_from_env()
    return NO_FAULTS if fault is None else FaultInjector(fault, run_dir, rank, log)
