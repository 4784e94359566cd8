"""The Ray launcher as a user meets it: real drivers in real processes on a real local Ray runtime.

* a driver started the way ``make demo`` starts it, through a bootstrapped ``.bootstrap/bin/uv run``
  (uv not on PATH), gets its workers started (Ray's ``uv run`` propagation used to re-run that
  relative command inside its copy of the working directory, where it does not exist: no worker ever
  started and the driver waited forever);
* workers that can never start end the job with one line, within ``distributed.start_timeout_s``;
* SIGINT stops a running job within seconds, leaves no process behind and a checkpoint that
  ``--resume`` completes into the plan of an uninterrupted run; the job's sockets are on loopback;
* SIGTERM stops the in-process job the same way (exit 143).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from singe_dist.demo import DEMO_CONFIG
from singe_dist.plan.plan import Plan

from .support import as_sets, small_job_overrides
from .ray_head import REPO_ROOT, is_loopback, listening_tcp_sockets
from .ray_hooks import MISSING_PYTHON

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "VIRTUAL_ENV"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def _real_uv() -> Path | None:
    for candidate in (shutil.which("uv"), REPO_ROOT / ".bootstrap" / "bin" / "uv"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def test_workers_that_cannot_start_end_the_job_with_one_line_in_bounded_time(digits_shards, tmp_path) -> None:
    timeout = 15
    sets = small_job_overrides(digits_shards, None, tmp_path / "run", distributed__num_workers=2,
                               distributed__start_timeout_s=timeout)
    # every Ray worker process is started with a Python that does not exist (tests/ray_hooks.py)
    env = _env(RAY_RUNTIME_ENV_HOOK="tests.ray_hooks.missing_python")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "singe_dist.cli", "prune", "--config", str(DEMO_CONFIG), *as_sets(sets)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout + 240)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert lines[0].startswith(f"singe-dist prune: error: the 2 Ray Train workers did not start within "
                               f"distributed.start_timeout_s={timeout} s (Ray: "), lines[0]
    assert MISSING_PYTHON in lines[0] and "No such file or directory" in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert elapsed < timeout + 150, elapsed  # Ray start-up and shutdown on a busy 2-core machine included


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _descendants(root: int) -> dict[int, str]:
    """{pid: comm} of ``root`` and every live descendant."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1: stat.rindex(")")]
            parents[int(entry.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), comm)
    found = {root: parents.get(root, (0, "?"))[1]}
    grew = True
    while grew:
        new = {pid: comm for pid, (ppid, comm) in parents.items() if ppid in found and pid not in found}
        found.update(new)
        grew = bool(new)
    return {pid: comm for pid, comm in found.items() if _alive(pid)}


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a driver that did not stop and everything it started (a local Ray runtime's raylet, GCS,
    workers), so a failed test leaves nothing behind to load or confuse the tests after it."""
    for pid in _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, path.read_text()):
            return
        assert proc.poll() is None, path.read_text()[-4000:]
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not seen within {timeout} s:\n{path.read_text()[-4000:]}")


def _bootstrapped_clone(tmp_path: Path) -> tuple[Path, dict[str, str]] | None:
    """A newcomer's checkout: the project's files, the real uv bootstrapped into the git-ignored
    .bootstrap/bin/uv, uv not on PATH; and the environment to run it in (the test's own, already synced)."""
    uv = _real_uv()
    if uv is None:
        return None
    clone = tmp_path / "clone"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("singe_dist", "jobs", "pyproject.toml", "uv.lock", "README.md", ".gitignore", ".python-version"):
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, clone / name, ignore=ignore)
        elif source.is_file():
            shutil.copy2(source, clone / name)
    (clone / ".bootstrap" / "bin").mkdir(parents=True)
    (clone / ".bootstrap" / "bin" / "uv").symlink_to(uv)
    no_uv_path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                 if p and not (Path(p) / "uv").exists())
    return clone, _env(PATH=no_uv_path, UV_PROJECT_ENVIRONMENT=sys.prefix)


def _reference_rank(rank: int, init_file: str, overrides: list[str]) -> None:
    """One rank of the uninterrupted reference: the same loop over a plain Gloo group (Ray only launches)."""
    import torch
    import torch.distributed as dist

    from singe_dist.config import load_config
    from singe_dist.engine.collective import TorchCollective
    from singe_dist.engine.loop import PruneJob

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        PruneJob(load_config(DEMO_CONFIG, overrides), TorchCollective(torch.device("cpu")), log=lambda _m: None).run()
    finally:
        dist.destroy_process_group()



def _signal(proc: subprocess.Popen, sig: int, timeout: float) -> tuple[str, float]:
    """Send ``sig``, wait for the process to end; its stderr and how long it took to stop.

    A process still running after ``timeout`` is killed with what it started, and the test fails with
    what it wrote to stderr.
    """
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        _out, err = proc.communicate()
        raise AssertionError(f"still running {timeout} s after {signal.Signals(sig).name}; its stderr:\n{err[-4000:]}")
    return err, time.monotonic() - t0

def test_sigint_stops_a_ray_job_and_a_bootstrapped_uv_resume_ends_with_the_uninterrupted_plan(
    digits_shards, digits_baseline, tmp_path
) -> None:
    def overrides(out_dir: Path) -> list[str]:
        return small_job_overrides(digits_shards, digits_baseline, out_dir, prune__steps=3,
                                   finetune__iters_per_step=30, distributed__num_workers=2,
                                   distributed__torch_threads=1, distributed__start_timeout_s=300)

    # 1. a job on 2 Ray Train workers of the local runtime, interrupted by SIGINT after step 1
    run_dir = tmp_path / "run"
    sets = as_sets(overrides(run_dir))
    log = tmp_path / "stdout.txt"
    with log.open("w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "singe_dist.cli", "prune", "--config", str(DEMO_CONFIG), *sets],
                                cwd=REPO_ROOT, env=_env(), stdout=stdout, stderr=subprocess.PIPE, text=True)
        try:
            _wait_for(log, r"step 2/3", proc, timeout=400)  # step 1 is done and checkpointed
            processes = _descendants(proc.pid)
            assert any(comm == "raylet" for comm in processes.values()), processes
            assert sum("RayTrainWo" in comm for comm in processes.values()) == 2, processes
            # the embedded runtime listens on loopback; the one exception is torch.distributed's
            # rendezvous store on rank 0, which binds every interface (docs/RELIABILITY.md)
            sockets = [(a, port, pid) for a, port, pid in listening_tcp_sockets() if pid in processes]
            assert len(sockets) >= 5, sockets
            exposed = [(a, port, processes[pid]) for a, port, pid in sockets if not is_loopback(a)]
            assert len(exposed) <= 1 and all("RayTrainWo" in comm for _a, _p, comm in exposed), exposed
            err, stopped_in = _signal(proc, signal.SIGINT, timeout=60)
        finally:
            if proc.poll() is None:
                _kill_tree(proc)
    output = log.read_text() + err
    assert proc.returncode == 130, output[-4000:]
    assert stopped_in < 15, stopped_in
    assert "Traceback" not in output and "SIGTERM received" not in output
    last = err.strip().splitlines()[-1]
    found = re.fullmatch(r"singe-dist prune: stopped by SIGINT: the last checkpoint (\S+checkpoint\.pt) \(after step "
                         r"([12])\) is intact: continue with `(singe-dist prune .* --resume)`", last)
    assert found and found.group(1) == str(run_dir / "checkpoint.pt"), last
    # driver, GCS, raylet, agents, controller, workers: all gone. Workers notice their raylet is gone on
    # their own poll, so on a loaded machine that takes seconds: wait for it, within a bound
    deadline = time.monotonic() + 30
    while (left := {pid: comm for pid, comm in processes.items() if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, left
    assert not (run_dir / "plan.json").exists()  # it really stopped mid-run

    # 2. the --resume, started as `make demo` starts its driver: `.bootstrap/bin/uv run --locked singe-dist ...`
    #    with uv off PATH. Ray's uv-run propagation used to re-run that relative path inside its copy of the
    #    working directory, where it does not exist: no worker ever started and the driver waited forever.
    clone = _bootstrapped_clone(tmp_path)
    if clone is not None:
        cwd, env = clone
        command = [".bootstrap/bin/uv", "run", "--locked", "--no-sync", "--offline", "singe-dist", "prune"]
    else:  # no uv binary here (make test always has one): the same job, started by this Python
        cwd, env, command = REPO_ROOT, _env(), [sys.executable, "-m", "singe_dist.cli", "prune"]
    resumed = subprocess.run([*command, "--config", str(DEMO_CONFIG), *sets, "--resume"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=420)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert f"resuming {run_dir} at step {int(found.group(2)) + 1}" in resumed.stdout, resumed.stdout[-3000:]
    assert "step 3/3" in resumed.stdout and "| final" in resumed.stdout  # the job's own progress and table
    for noise in (".bootstrap/bin/uv: No such file", "VIRTUAL_ENV", "(raylet)", "TrainController", "Traceback"):
        assert noise not in output, noise

    # 3. the plan of an uninterrupted 2-rank run of the same loop
    reference_dir = tmp_path / "reference"
    mp.spawn(_reference_rank, args=(str(tmp_path / "init"), overrides(reference_dir)), nprocs=2, join=True)
    assert Plan.load(run_dir / "plan.json") == Plan.load(reference_dir / "plan.json")


def test_sigterm_stops_the_in_process_job_with_one_line_and_exit_143(digits_shards, digits_baseline, tmp_path) -> None:
    run_dir = tmp_path / "run"
    sets = small_job_overrides(digits_shards, digits_baseline, run_dir, prune__steps=3, finetune__iters_per_step=200)
    log = tmp_path / "stdout.txt"
    with log.open("w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "singe_dist.cli", "prune", "--config", str(DEMO_CONFIG),
                                 *as_sets(sets)], cwd=REPO_ROOT, env=_env(), stdout=stdout, stderr=subprocess.PIPE,
                                text=True)
        try:
            _wait_for(log, r"step 1/3", proc, timeout=120)
            err, stopped_in = _signal(proc, signal.SIGTERM, timeout=30)
        finally:
            if proc.poll() is None:
                _kill_tree(proc)
    assert proc.returncode == 143, (log.read_text() + err)[-3000:]
    assert stopped_in < 10, stopped_in
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"singe-dist prune: stopped by SIGTERM: the last checkpoint {run_dir / 'checkpoint.pt'} (after step 0) is intact")


def test_a_ray_run_that_fails_beyond_max_failures_is_one_line() -> None:
    """What Ray Train hands back (the errors as Ray builds them), turned into the job's one line."""
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError, WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from singe_dist.config import load_config
    from singe_dist.distributed.failures import failure_line as _failure_line

    config = load_config(DEMO_CONFIG, ["distributed.max_failures=1", "distributed.start_timeout_s=60"])
    died = WorkerHealthCheckFailedError("A worker health check failed.", ActorDiedError())
    line = _failure_line(WorkerGroupError("...", {1: died, 0: died}), config)
    assert line == ("the Ray workers failed after 1 restart(s) (distributed.max_failures); rank 0: "
                    "WorkerHealthCheckFailedError: A worker health check failed. (ActorDiedError: The actor died "
                    "unexpectedly before finishing this task.); fix the cause and continue from the last checkpoint "
                    "with --resume")
    # the job's own error in a worker keeps its own line
    own = RuntimeError("Traceback (most recent call last):\n  File ...\nsinge_dist.errors.SingeError: validation data "
                       "changed during the run: 0 samples evaluated\n")
    assert _failure_line(WorkerGroupError("...", {0: own}), config) == \
        "validation data changed during the run: 0 samples evaluated"
    # a worker group that cannot be placed again (every node lost), bounded by the start timeout
    line = _failure_line(ControllerError(WorkerGroupStartupTimeoutError(2)), config)
    assert line.startswith("the 2 Ray Train workers could not be (re)started within distributed.start_timeout_s=60 s "
                           "(Ray: WorkerGroupStartupTimeoutError: The worker group startup timed out"), line
    assert "\n" not in line


def test_the_local_runtime_is_its_own_even_when_ray_start_recorded_a_cluster(tmp_path) -> None:
    """Without ``distributed.address`` the job starts a Ray runtime of its own. ``ray.init()`` alone would
    join the cluster that ``ray start`` last recorded in ``<RAY_TMPDIR>/ray/ray_current_cluster``: here a
    recorded head that is gone (a port nothing listens on), as after a crashed or stopped ``ray start``."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
        code = ("from singe_dist.distributed.ray_runtime import connect\n"
                "ray = connect(None, num_cpus=1)\n"
                "print('GCS', ray.get_runtime_context().gcs_address)\n"
                "ray.shutdown()\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(RAY_TMPDIR=str(ray_tmp)),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        gcs = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("GCS ")]
        assert gcs and gcs[0] != "127.0.0.1:9" and gcs[0].startswith("127.0.0.1:"), proc.stdout
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_local_ray_job_that_loses_every_worker_ends_with_one_line_and_resumes(
    digits_shards, digits_baseline, tmp_path
) -> None:
    """Every Ray Train worker process dies mid-run (os._exit right after step 1's checkpoint, as a kill
    would), beyond ``distributed.max_failures=0``: the driver ends within bounded time with the one line
    that names what Ray saw and how to continue, and ``--resume`` (without
    the fault) completes the job from the checkpoint the dead workers left."""
    run_dir = tmp_path / "run"
    sets = as_sets(small_job_overrides(digits_shards, digits_baseline, run_dir, prune__steps=2,
                                       distributed__num_workers=2, distributed__max_failures=0,
                                       distributed__torch_threads=1, distributed__start_timeout_s=300))
    command = [sys.executable, "-m", "singe_dist.cli", "prune", "--config", str(DEMO_CONFIG), *sets]
    t0 = time.monotonic()
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=_env(SINGE_DIST_FAIL_AT="step:1", SINGE_DIST_FAIL_MODE="exit"))  # every rank
    elapsed = time.monotonic() - t0
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-4000:]
    assert "step 1/2" in proc.stdout and "step 2/2" not in proc.stdout  # it died after step 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-4000:]
    # the cause Ray reported: the rank that was killed, or one that lost its peer in a collective
    assert re.match(r"singe-dist prune: error: the Ray workers failed \(distributed\.max_failures=0: no restart\); "
                    r"rank [01]: \w+", lines[0]), lines[0]
    assert lines[0].endswith("continue from the last checkpoint with --resume"), lines[0]
    assert "Traceback" not in output
    assert elapsed < 400, elapsed  # start-up, step 1 and shutdown on a busy 2-core machine
    assert (run_dir / "checkpoint.pt").is_file() and not (run_dir / "plan.json").exists()

    resumed = subprocess.run([*command, "--resume"], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    assert f"resuming {run_dir} at step 2" in resumed.stdout, resumed.stdout[-3000:]
    assert [s["step"] for s in json.loads((run_dir / "report.json").read_text())["steps"]] == [1, 2]
