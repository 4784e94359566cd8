"""A stop request is never lost: not even when the signal lands inside a finalizer.

Python raises a signal handler's exception in whatever Python code the main thread runs at that
moment; inside a ``__del__`` it prints "Exception ignored" and carries on. A job that met its
SIGTERM there used to run on to its end (a CI run waited 30 s on a job asked to stop). The long
loops (fine-tuning, evaluation, relevance) must stop at their next batch instead.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from singe_dist.interrupt import Interrupted, check, interruptible

from .ray_head import REPO_ROOT

# the signal handlers are the process's, not pytest's: one process runs each loop in turn
SCRIPT = textwrap.dedent("""
    import os, signal
    import torch
    from torch import nn
    from singe_dist.engine.train import eval_sums, recalibrate_batchnorm, train_steps
    from singe_dist.interrupt import Interrupted, interruptible
    from singe_dist.relevance.criterion_config import CriterionConfig
    from singe_dist.relevance.criteria import accumulate
    from singe_dist.relevance.groups import find_groups

    torch.manual_seed(0)
    torch.set_num_threads(1)

    class SignalsInItsFinalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs in here: Python ignores the exception it raises
                pass

    def batches(drawn):
        while drawn[0] < 40:
            drawn[0] += 1
            if drawn[0] == 2:
                SignalsInItsFinalizer()  # freed at once, in the middle of the loop
            yield torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    groups = find_groups(model, torch.randn(1, 3, 8, 8))
    loops = {
        "finetune": lambda b: train_steps(model, torch.optim.SGD(model.parameters(), lr=0.01), b, 40, 0.01),
        "evaluate": lambda b: eval_sums(model, b),
        "batchnorm": lambda b: recalibrate_batchnorm(model, b),
        "relevance": lambda b: accumulate(model, groups, b, CriterionConfig(name="singe", steps=2)),
    }
    for name, loop in loops.items():
        drawn = [0]
        try:
            with interruptible():
                loop(batches(drawn))
            print(f"{name}: ran to the end: {drawn[0]} batches", flush=True)
        except Interrupted as exc:
            print(f"{name}: stopped by {exc.name} after {drawn[0]} batches", flush=True)
""")


def test_a_stop_signal_swallowed_by_a_finalizer_stops_the_loop_at_its_next_batch() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the scenario happened in each loop: the handler's exception was raised inside the finalizer and ignored
    assert proc.stderr.count("Exception ignored") == 4, proc.stderr[-3000:]
    assert proc.stderr.count("Interrupted: SIGTERM") == 4, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [f"{loop}: stopped by SIGTERM after 2 batches"
                                        for loop in ("finetune", "evaluate", "batchnorm", "relevance")], proc.stdout


class _SwallowsASignal:
    """Receives ``signum`` in its finalizer, where Python ignores the exception the handler raises."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)
        for _ in range(1000):
            pass


def _swallow(signum: int, monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    ignored: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: ignored.append(unraisable.exc_value))
    _SwallowsASignal(signum)
    return ignored


def test_a_swallowed_stop_survives_a_nested_interruptible_and_a_repeated_signal_raises_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with interruptible():  # the CLI's; the Ray launcher opens its own inside it
        ignored = _swallow(signal.SIGTERM, monkeypatch)
        assert [type(e) for e in ignored] == [Interrupted]  # the scenario happened
        with interruptible():
            with pytest.raises(Interrupted) as stopped:
                check()
            assert stopped.value.name == "SIGTERM"
            with pytest.raises(Interrupted) as again:  # Ctrl-C after a swallowed SIGTERM is not ignored
                signal.raise_signal(signal.SIGINT)
                for _ in range(1000):
                    pass
            assert again.value.name == "SIGINT"
    check()  # outside every interruptible(): no stop is pending any more


def test_a_second_signal_during_the_clean_up_does_not_cut_it_short() -> None:
    cleaned = []
    with pytest.raises(Interrupted) as stopped:
        with interruptible():
            try:
                signal.raise_signal(signal.SIGTERM)
                for _ in range(1000):
                    pass
            finally:
                signal.raise_signal(signal.SIGINT)  # ignored: the SIGTERM's Interrupted is propagating
                for _ in range(1000):
                    pass
                cleaned.append(True)
    assert stopped.value.name == "SIGTERM" and cleaned == [True]
