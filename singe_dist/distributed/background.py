"""Work in a daemon thread, so that the main thread keeps the signals while it waits.

Python delivers SIGINT/SIGTERM to the main thread only, between bytecodes: a main thread blocked in
``trainer.fit()`` or in the demo's prepare would not stop. Both run here instead, and the main thread
joins in short slices and checks :func:`singe_dist.interrupt.check` between them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from singe_dist import interrupt


class Background:
    """``work()`` in a daemon thread; its result or error, and how long it took, are kept for the main thread."""

    def __init__(self, work: Callable[[], Any], name: str) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.t0 = time.perf_counter()
        self.seconds = 0.0

        def run() -> None:
            try:
                self.result = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc
            self.seconds = time.perf_counter() - self.t0

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def is_alive(self) -> bool:
        """Whether ``work()`` still runs."""
        return self.thread.is_alive()

    def join(self, timeout: float) -> None:
        """Wait at most ``timeout`` seconds (short, so the caller can check for signals in between)."""
        self.thread.join(timeout)

    def wait(self) -> float:
        """Wait for ``work()``, stopping at a signal; re-raise its error, else return its seconds."""
        while self.thread.is_alive():
            self.thread.join(0.5)
            interrupt.check()
        if self.error is not None:
            raise self.error
        return self.seconds
