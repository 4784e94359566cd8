"""Fault injection (docs/RELIABILITY.md, fault matrix): a killed worker or driver resumes to the same result.

The killed worker is a real process death: the job runs in a forked child of the test process (the CLI's
own ``main``, with the imports already paid for) that ends with ``os._exit`` at the injected fault or is
SIGKILLed from outside; ``--resume`` must then end with the plan and the weights of an uninterrupted
run (the session's ``reference``), bit for bit.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from singe_dist import cli
from singe_dist.checkpoint import read_checkpoint
from singe_dist.engine.faults import FAIL_AT_ENV, FAIL_ENV, FAIL_EXIT_CODE, FAIL_MODE_ENV, Fault, fault_from_env
from singe_dist.engine.run_dir import CHECKPOINT_NAME, read_job_checkpoint
from singe_dist.errors import SingeError

from .support import fast_job_config, fork, prune_argv, same_result, wait


def test_fault_specs_parse_and_a_bad_one_is_one_line() -> None:
    assert fault_from_env({}) is None
    assert fault_from_env({FAIL_AT_ENV: "relevance:2"}) == Fault("relevance", 2, None)
    assert fault_from_env({FAIL_AT_ENV: "checkpoint:0:1"}) == Fault("checkpoint", 0, 1)
    assert fault_from_env({FAIL_ENV: "1:1"}) == Fault("step", 1, 1)  # the older variable (tests/test_ray_job.py)
    for bad in ("relevanse:2", "finetune", "finetune:x", "step:1:2:3"):
        with pytest.raises(SingeError) as err:
            fault_from_env({FAIL_AT_ENV: bad})
        assert str(err.value) == (f"{FAIL_AT_ENV}={bad!r}: expected <phase>:<step>[:<rank>] with phase one of "
                                  "relevance, finetune, checkpoint, step")


@pytest.mark.parametrize(
    ("fault", "extra", "survivor"),
    [
        # dies before step 1's checkpoint: the one written after the baseline evaluation is resumed
        ("relevance:1", {}, {"step": 0, "pruned": False, "iteration": 0}),
        # dies at iteration 3 of 4 of step 1's fine-tuning: resumed from iteration 2's checkpoint
        ("finetune:1", {"run__checkpoint_every": 2}, {"step": 0, "pruned": True, "iteration": 2}),
        # dies with half of step 2's checkpoint written: step 1's stays in place, the torn file is cleared
        ("checkpoint:2", {}, {"step": 1, "pruned": False, "iteration": 0}),
    ],
    ids=["during-relevance", "during-fine-tuning", "during-checkpoint-write"],
)
def test_a_worker_killed_mid_phase_resumes_to_the_uninterrupted_result(
        digits_shards, digits_baseline, reference, tmp_path, fault, extra, survivor) -> None:
    run_dir = tmp_path / "run"
    argv = prune_argv(digits_shards, digits_baseline, run_dir, **extra)
    pid = fork(lambda: cli.main(argv), {FAIL_AT_ENV: fault, FAIL_MODE_ENV: "exit"}, tmp_path / "crash.log")
    assert wait(pid) == FAIL_EXIT_CODE, (tmp_path / "crash.log").read_text()[-3000:]
    log = (tmp_path / "crash.log").read_text()
    phase = fault.split(":")[0]
    assert f"fault injection: rank 0 fails {'while writing' if phase == 'checkpoint' else 'during'}" in log
    assert not (run_dir / "report.json").exists()

    ckpt, *_ = read_job_checkpoint(run_dir / CHECKPOINT_NAME, fast_job_config(
        digits_shards, digits_baseline, run_dir))  # the survivor is whole and consistent
    assert ckpt["position"] == survivor
    torn = sorted(p.name for p in run_dir.glob(".checkpoint.pt.*.tmp"))
    assert len(torn) == (1 if phase == "checkpoint" else 0)

    assert cli.main([*argv, "--resume"]) == 0
    same_result(run_dir, reference)
    assert not list(run_dir.glob(".*.tmp"))  # the resume cleared the torn temporary file


def test_the_driver_killed_at_any_moment_resumes_to_the_uninterrupted_result(
        digits_shards, digits_baseline, reference, tmp_path) -> None:
    """No injection: SIGKILL from outside once step 1 is checkpointed, wherever the job is then."""
    run_dir = tmp_path / "run"
    argv = prune_argv(digits_shards, digits_baseline, run_dir)
    pid = fork(lambda: cli.main(argv), None, tmp_path / "driver.log")
    deadline = time.monotonic() + 300
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        assert not done, "the job ended before it could be killed"
        try:
            if read_checkpoint(run_dir / CHECKPOINT_NAME)["position"]["step"] >= 1:
                break
        except SingeError:  # not written yet
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    assert wait(pid) == -signal.SIGKILL
    assert not (run_dir / "report.json").exists()
    assert cli.main([*argv, "--resume"]) == 0
    same_result(run_dir, reference)
