"""A stop request is never lost: not even when the signal lands inside a finalizer.

Python raises a signal handler's exception in whatever Python code the main thread runs at that
moment; inside a ``__del__`` it prints "Exception ignored" and carries on. A job that met its
SIGTERM there used to run on to its end (a CI run waited 30 s on a job asked to stop). The long
loops (fine-tuning, evaluation, relevance) must stop at their next batch instead.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .ray_head import REPO_ROOT

# one process per loop: the signal handlers are the process's, not pytest's
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    from torch import nn
    from singe_dist.interrupt import Interrupted, interruptible

    torch.manual_seed(0)
    torch.set_num_threads(1)
    loop = sys.argv[1]
    drawn = 0

    class SignalsInItsFinalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # the handler runs in here: Python ignores the exception it raises
                pass

    def batches():
        global drawn
        while drawn < 40:
            drawn += 1
            if drawn == 2:
                SignalsInItsFinalizer()  # freed at once, in the middle of the loop
            yield torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    try:
        with interruptible():
            if loop == "finetune":
                from singe_dist.engine.train import train_steps
                train_steps(model, torch.optim.SGD(model.parameters(), lr=0.01), batches(), 40, 0.01)
            elif loop == "evaluate":
                from singe_dist.engine.train import eval_sums
                eval_sums(model, batches())
            else:
                from singe_dist.relevance.config import CriterionConfig
                from singe_dist.relevance.criteria import accumulate
                from singe_dist.relevance.groups import find_groups
                groups = find_groups(model, torch.randn(1, 3, 8, 8))
                accumulate(model, groups, batches(), CriterionConfig(steps=2))
        print(f"ran to the end: {drawn} batches")
    except Interrupted as exc:
        print(f"stopped by {exc.name} after {drawn} batches")
""")


@pytest.mark.parametrize("loop", ["finetune", "evaluate", "relevance"])
def test_a_stop_signal_swallowed_by_a_finalizer_stops_the_loop_at_its_next_batch(loop: str) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, loop], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    # the scenario happened: the handler's exception was raised inside the finalizer and ignored there
    assert "Exception ignored" in proc.stderr and "Interrupted: SIGTERM" in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "stopped by SIGTERM after 2 batches", proc.stdout + proc.stderr[-3000:]
