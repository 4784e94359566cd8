"""What many test files share: the small job's overrides, the CLI run in a subprocess, forked jobs, idx files.

The Ray head and the MLflow server the tests start are :mod:`tests.ray_head` and
:mod:`tests.mlflow_server`; the session fixtures (digits data, shards, a trained baseline, the
uninterrupted reference run) are in ``conftest.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from singe_dist.demo import DEMO_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[1]
DIGITS_SIZE = 16
# a job of a few seconds: 2 pruning steps of 4 fine-tune iterations, 2 final ones, no DataLoader workers
FAST = {"finetune__iters_per_step": 4, "finetune__final_iters": 2, "data__num_workers": 0,
        "run__latency_batch_sizes": "[1]"}


# ---------------------------------------------------------------------------------- the small job
def small_job_overrides(shards: dict[str, str], baseline: str | None, out_dir, **extra: object) -> list[str]:  # noqa: ANN001
    """Overrides of jobs/configs/demo.yaml for a job of a few seconds on 16 px digits shards.

    ``extra``: more keys, ``section__key=value``.
    """
    values = {
        "data.train": shards["train"], "data.val": shards["val"], "data.image_size": DIGITS_SIZE,
        "data.resize_size": DIGITS_SIZE, "data.batch_size": 32, "data.train_samples": 1437,
        "model.checkpoint": baseline or "null", "run.out_dir": str(out_dir), "prune.steps": 2,
        "finetune.iters_per_step": 8, "finetune.final_iters": 8, "criterion.calibration_batches": 1,
        "criterion.steps": 2, "tracking.enabled": "false", "distributed.num_workers": 0,
        "criterion.name": "singe",  # the mechanics tests exercise SInGE's all-reduced relevance, whatever demo.yaml names
        "finetune.distill_weight": 0,  # mechanics, not quality: no teacher pass unless a test asks for one
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def small_job_config(shards: dict[str, str], baseline: str | None, out_dir, **extra: object):  # noqa: ANN001, ANN201
    """The small job's :class:`~singe_dist.config.JobConfig`."""
    from singe_dist.config import load_config

    return load_config(DEMO_CONFIG, small_job_overrides(shards, baseline, out_dir, **extra))


def fast_job_config(shards: dict[str, str], baseline: str | None, out_dir, **extra: object):  # noqa: ANN001, ANN201
    """The small job, shorter still (:data:`FAST`): the reliability tests run it many times."""
    return small_job_config(shards, baseline, out_dir, **{**FAST, **extra})


def as_sets(overrides: list[str]) -> list[str]:
    """``["--set", o1, "--set", o2, ...]``."""
    return sum((["--set", o] for o in overrides), [])


def prune_argv(shards: dict[str, str], baseline: str | None, out_dir, *more: str, **extra: object) -> list[str]:  # noqa: ANN001
    """``singe-dist prune`` arguments of the fast small job."""
    sets = as_sets(small_job_overrides(shards, baseline, out_dir, **{**FAST, **extra}))
    return ["prune", "--config", str(DEMO_CONFIG), *sets, *more]


# ---------------------------------------------------------------------------------- the CLI
def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m singe_dist.cli ARGS`` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "singe_dist.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


# ---------------------------------------------------------------------------------- forked jobs
def fork(target: Callable[[], object], env: dict[str, str] | None, log: Path) -> int:
    """Run ``target()`` (returning an exit status) in a forked child, stdout/stderr to ``log``; its pid."""
    pid = os.fork()
    if pid:
        return pid
    status = 98
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.update(env or {})
        status = int(target() or 0)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        status = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def wait(pid: int, timeout: float = 300) -> int:
    """The exit code of forked child ``pid`` (negative: the signal that ended it); SIGKILLed after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"forked job {pid} did not end within {timeout} s")
        time.sleep(0.02)


def same_result(run_dir: Path, reference: Path) -> None:
    """The plan and the final weights of ``run_dir`` are those of the uninterrupted ``reference``."""
    from singe_dist.checkpoint import read_checkpoint
    from singe_dist.plan.plan import Plan

    assert Plan.load(run_dir / "plan.json") == Plan.load(reference / "plan.json")
    a = read_checkpoint(run_dir / "pruned.pt")["state_dict"]
    b = read_checkpoint(reference / "pruned.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = lambda d: [r["finetuned"] for r in json.loads((d / "report.json").read_text())["steps"]]  # noqa: E731
    assert steps(run_dir) == steps(reference)


# ---------------------------------------------------------------------------------- models
def pruned_widths(model: torch.nn.Module) -> dict[str, int]:
    """Output width of every Conv2d / Linear, to compare architectures."""
    return {name: (m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


# ---------------------------------------------------------------------------------- idx files
def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` as a gzipped idx file of unsigned bytes, the format Fashion-MNIST ships in."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def digits_as_fashion_files(directory: Path) -> Path:
    """Fashion-MNIST's training files, made of the digits that ship with scikit-learn (real 8x8 images,
    scaled to 0-255): the garments ``benchmarks/imagenet_rehearsal_data.py`` pastes onto its photographs,
    without the Debian package that the test suite must not need."""
    from sklearn.datasets import load_digits

    from singe_dist.data.convert import FASHION_MNIST_FILES

    digits = load_digits()
    image_file, label_file = FASHION_MNIST_FILES["train"]
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / image_file, np.round(digits.images * (255 / 16)))
    write_idx(directory / label_file, digits.target)
    return directory
