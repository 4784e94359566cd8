"""Ctrl-C and SIGTERM: stop a job within seconds, with one line that says how to continue.

While :func:`interruptible` is active, SIGINT and SIGTERM raise :class:`Interrupted` (a
``KeyboardInterrupt``, so ``except Exception`` never swallows it) in the main thread. The job's own
``finally`` blocks and the launcher's clean-up (workers, the local Ray runtime) run; the CLI then
prints :func:`resume_hint` and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The job was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum: int, _frame: object) -> None:
    for s in SIGNALS:  # a second signal while cleaning up must not cut the clean-up short
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread (no-op in other threads).

    Installed after ``ray.init`` too (:func:`reinstall`): Ray's core worker puts a C++ handler on
    SIGTERM that prints a stack trace and aborts.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    reinstall()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def reinstall() -> None:
    """Put the :class:`Interrupted` handlers back (after a library replaced them)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _raise)


def resume_hint(run_dir: str | Path, command: str) -> str:
    """One line: where the last checkpoint is and the command that continues the run."""
    from singe_dist.engine.run_dir import CHECKPOINT_NAME

    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return f"no checkpoint was written yet ({checkpoint}): run the same command again to start over"
    step = _checkpoint_step(checkpoint)
    where = f" (after step {step})" if step is not None else ""
    return f"the last checkpoint {checkpoint}{where} is intact: continue with `{command} --resume`"


def _checkpoint_step(path: Path) -> int | None:
    try:
        import torch

        position = torch.load(path, map_location="cpu", weights_only=True).get("position") or {}
        return int(position["step"])
    except Exception:  # noqa: BLE001 - the hint is best effort; --resume validates the file itself
        return None
