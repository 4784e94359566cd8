"""Ctrl-C and SIGTERM: stop a job within seconds, with one line that says how to continue.

While :func:`interruptible` is active, SIGINT and SIGTERM raise :class:`Interrupted` (a
``KeyboardInterrupt``, so ``except Exception`` never swallows it) in the main thread. The job's own
``finally`` blocks and the launcher's clean-up (workers, the local Ray runtime) run; the CLI then
prints :func:`singe_dist.engine.run_dir.resume_hint` and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

Python raises a handler's exception in whatever Python code the main thread runs when the signal
arrives. Inside a finalizer (a ``__del__``, a weakref callback, a generator closed by the garbage
collector) it prints "Exception ignored" and carries on: the stop request would be lost and the job
would run to its end. So the request is also remembered: the job's long loops (a batch of
fine-tuning, evaluation, BatchNorm re-estimation, a chunk of relevance rows; the Ray driver's watch)
call :func:`check`, which raises it again, and a repeated signal raises it again at once. Only while
an :class:`Interrupted` is propagating (the clean-up) are further signals ignored.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The job was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_requested: int | None = None  # the signal that asked this process to stop, while interruptible() is active
_depth = 0  # nesting of interruptible() (the Ray launcher's inside the CLI's): the outermost owns _requested


def _in_flight() -> bool:
    """Whether an :class:`Interrupted` is propagating here (a ``finally``, an ``__exit__``, a clean-up it calls)."""
    exc = sys.exc_info()[1]
    while exc is not None:
        if isinstance(exc, Interrupted):
            return True
        exc = exc.__context__
    return False


def _raise(signum: int, _frame: object) -> None:
    global _requested
    if _in_flight():  # a second signal while cleaning up must not cut the clean-up short
        return
    _requested = signum  # remembered: check() raises it again if a finalizer swallows this one
    raise Interrupted(signum)


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested: once per batch of the job's long loops.

    The handler raised it already; work that still runs means a finalizer swallowed it.
    """
    if (_requested is not None and threading.current_thread() is threading.main_thread()
            and not _in_flight()):
        raise Interrupted(_requested)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` in the main thread (no-op in other threads).

    Installed after ``ray.init`` too (:func:`reinstall`): Ray's core worker puts a C++ handler on
    SIGTERM that prints a stack trace and aborts. Nested uses keep the outermost one's request.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _requested, _depth
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    if _depth == 0:
        _requested = None
    _depth += 1
    reinstall()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _depth -= 1
        if _depth == 0:
            _requested = None


def reinstall() -> None:
    """Put the :class:`Interrupted` handlers back (after a library replaced them)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _raise)
