"""Reliability under faults and bad input (docs/RELIABILITY.md: the fault matrix and the bad-input table).

The killed worker is a real process death: the job runs in a forked child of the test process (the CLI's
own ``main`` or :class:`PruneJob`, with the imports already paid for) that ends with ``os._exit`` at the
injected fault or is SIGKILLed from outside; ``--resume`` must then end with the plan and the weights of
an uninterrupted run, bit for bit. The full disk is a real tmpfs of its own mount namespace, filled up
(where the test may mount; else a real ``RLIMIT_FSIZE`` refusal of the same write). The MLflow server
that goes away is a real ``mlflow server`` on 127.0.0.1, SIGKILLed while a real ``singe-dist prune``
process logs to it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import runpy
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from singe_dist import cli
from singe_dist.atomic import atomic_write_text
from singe_dist.checkpoint import load_model, read_checkpoint, save_checkpoint
from singe_dist.config import load_config
from singe_dist.data.streams import DataStreams
from singe_dist.demo import DEMO_CONFIG
from singe_dist.engine.faults import FAIL_AT_ENV, FAIL_ENV, FAIL_EXIT_CODE, FAIL_MODE_ENV, Fault, fault_from_env
from singe_dist.engine.loop import PruneJob
from singe_dist.engine.run_dir import CHECKPOINT_NAME, read_job_checkpoint
from singe_dist.errors import SingeError
from singe_dist.plan.plan import Plan

from .conftest import small_job_overrides
from .mlflow_server import start_mlflow_server

REPO_ROOT = Path(__file__).resolve().parents[1]
SOAK = REPO_ROOT / "benchmarks" / "memory_soak.py"
# a job of a few seconds: 2 pruning steps of 4 fine-tune iterations, 2 final ones, no DataLoader workers
FAST = {"finetune__iters_per_step": 4, "finetune__final_iters": 2, "data__num_workers": 0,
        "run__latency_batch_sizes": "[1]"}


def _overrides(shards: dict[str, str], baseline: str | None, out_dir: Path, **extra: object) -> list[str]:
    return small_job_overrides(shards, baseline, out_dir, **{**FAST, **extra})


def _config(shards, baseline, out_dir, **extra):  # noqa: ANN001, ANN202
    return load_config(DEMO_CONFIG, _overrides(shards, baseline, out_dir, **extra))


def _prune_argv(shards, baseline, out_dir, *more: str, **extra) -> list[str]:  # noqa: ANN001
    sets = sum((["--set", o] for o in _overrides(shards, baseline, out_dir, **extra)), [])
    return ["prune", "--config", str(DEMO_CONFIG), *sets, *more]


def _fork(target, env: dict[str, str] | None, log: Path) -> int:  # noqa: ANN001
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


def _wait(pid: int, timeout: float = 300) -> int:
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


def _same_result(run_dir: Path, reference: Path) -> None:
    """The plan and the final weights of ``run_dir`` are those of the uninterrupted ``reference``."""
    assert Plan.load(run_dir / "plan.json") == Plan.load(reference / "plan.json")
    a = read_checkpoint(run_dir / "pruned.pt")["state_dict"]
    b = read_checkpoint(reference / "pruned.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = lambda d: [r["finetuned"] for r in json.loads((d / "report.json").read_text())["steps"]]  # noqa: E731
    assert steps(run_dir) == steps(reference)


@pytest.fixture(scope="module")
def reference(digits_shards, digits_baseline, tmp_path_factory) -> Path:  # noqa: ANN001
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    PruneJob(_config(digits_shards, digits_baseline, out), log=lambda _m: None).run()
    return out


# ---------------------------------------------------------------------------------- fault injection
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
    argv = _prune_argv(digits_shards, digits_baseline, run_dir, **extra)
    pid = _fork(lambda: cli.main(argv), {FAIL_AT_ENV: fault, FAIL_MODE_ENV: "exit"}, tmp_path / "crash.log")
    assert _wait(pid) == FAIL_EXIT_CODE, (tmp_path / "crash.log").read_text()[-3000:]
    log = (tmp_path / "crash.log").read_text()
    phase = fault.split(":")[0]
    assert f"fault injection: rank 0 fails {'while writing' if phase == 'checkpoint' else 'during'}" in log
    assert not (run_dir / "report.json").exists()

    ckpt, *_ = read_job_checkpoint(run_dir / CHECKPOINT_NAME, _config(
        digits_shards, digits_baseline, run_dir))  # the survivor is whole and consistent
    assert ckpt["position"] == survivor
    torn = sorted(p.name for p in run_dir.glob(".checkpoint.pt.*.tmp"))
    assert len(torn) == (1 if phase == "checkpoint" else 0)

    assert cli.main([*argv, "--resume"]) == 0
    _same_result(run_dir, reference)
    assert not list(run_dir.glob(".*.tmp"))  # the resume cleared the torn temporary file


def test_the_driver_killed_at_any_moment_resumes_to_the_uninterrupted_result(
        digits_shards, digits_baseline, reference, tmp_path) -> None:
    """No injection: SIGKILL from outside once step 1 is checkpointed, wherever the job is then."""
    run_dir = tmp_path / "run"
    argv = _prune_argv(digits_shards, digits_baseline, run_dir)
    pid = _fork(lambda: cli.main(argv), None, tmp_path / "driver.log")
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
    assert _wait(pid) == -signal.SIGKILL
    assert not (run_dir / "report.json").exists()
    assert cli.main([*argv, "--resume"]) == 0
    _same_result(run_dir, reference)


# ---------------------------------------------------------------------------------- full disk
_CLONE_NEWNS, _MS_REC, _MS_PRIVATE = 0x00020000, 0x4000, 1 << 18


def _mount_tmpfs(target: Path, size: str) -> None:
    """In this (forked) process only: a new mount namespace with a tmpfs of ``size`` on ``target``."""
    libc = ctypes.CDLL(None, use_errno=True)
    steps = [lambda: libc.unshare(_CLONE_NEWNS),
             lambda: libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None),  # nothing leaks out
             lambda: libc.mount(b"tmpfs", bytes(target), b"tmpfs", 0, f"size={size}".encode())]
    for step in steps:
        if step() != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def _can_mount(tmp: Path) -> str | None:
    """None if a forked child can mount a tmpfs in a namespace of its own, else why not."""
    (tmp / "probe").mkdir()
    pid = _fork(lambda: _mount_tmpfs(tmp / "probe", "64k"), None, tmp / "probe.log")
    return None if _wait(pid, 30) == 0 else (tmp / "probe.log").read_text().strip().splitlines()[-1]


@pytest.mark.parametrize("how", ["ENOSPC-tmpfs", "EFBIG-rlimit"])
def test_a_full_disk_is_one_line_and_the_previous_checkpoint_stays_intact(
        digits_shards, digits_baseline, tmp_path, how) -> None:
    """The disk fills up after the first checkpoint: the next write fails, the job stops with one line.

    ENOSPC-tmpfs: the run directory is a 4 MiB tmpfs that a filler file takes up. EFBIG-rlimit (needs no
    privilege): the process may not write files larger than 64 KiB from then on, a refusal the kernel
    makes at the same write() call.
    """
    if how == "ENOSPC-tmpfs" and (why := _can_mount(tmp_path)) is not None:
        pytest.skip(f"cannot mount a tmpfs here ({why}); the EFBIG-rlimit case covers the same write path")
    run_dir, saved, result = tmp_path / "run", tmp_path / "saved", tmp_path / "result.json"
    config = _config(digits_shards, digits_baseline, run_dir)

    def fill(_path: Path, position) -> None:  # noqa: ANN001 - after the baseline checkpoint
        if position.step == 0 and not position.pruned:
            if how == "ENOSPC-tmpfs":
                free = os.statvfs(run_dir)
                with open(run_dir / "filler", "wb") as fh:
                    fh.write(b"\0" * (free.f_bavail * free.f_frsize - 64 * 1024))
            else:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))

    def child() -> int:
        if how == "ENOSPC-tmpfs":
            run_dir.mkdir()
            _mount_tmpfs(run_dir, "4m")
        try:
            PruneJob(config, checkpoint_hook=fill, log=print).run()
            outcome = {"error": None}
        except SingeError as exc:
            outcome = {"error": str(exc)}
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        outcome["files"] = sorted(p.name for p in run_dir.iterdir())
        shutil.copytree(run_dir, saved, ignore=shutil.ignore_patterns("filler"))  # the tmpfs dies with us
        result.write_text(json.dumps(outcome))
        return 0

    assert _wait(_fork(child, None, tmp_path / "child.log")) == 0, (tmp_path / "child.log").read_text()[-3000:]
    outcome = json.loads(result.read_text())
    reason = "No space left on device (ENOSPC)" if how == "ENOSPC-tmpfs" else "File too large (EFBIG)"
    assert outcome["error"] == f"cannot write {run_dir / CHECKPOINT_NAME}: {reason}; the previous version is intact"
    assert [f for f in outcome["files"] if f.endswith(".tmp")] == []  # the partial temporary file was removed
    ckpt, *_ = read_job_checkpoint(saved / CHECKPOINT_NAME, config)
    assert ckpt["position"] == {"step": 0, "pruned": False, "iteration": 0}


# ---------------------------------------------------------------------------------- shards that disappear
@pytest.fixture()
def own_shards(digits_shards, tmp_path) -> dict[str, str]:  # noqa: ANN001
    """A private copy of the digits shards, which a test may delete."""
    copies = {}
    for split, pattern in digits_shards.items():
        source = Path(pattern).parent
        target = tmp_path / "shards"
        target.mkdir(exist_ok=True)
        for shard in source.glob(f"{split}-*.tar"):
            shutil.copy2(shard, target / shard.name)
        copies[split] = str(target / Path(pattern).name)
    return copies


def test_a_training_shard_that_disappears_is_skipped_with_a_warning_and_counted(
        own_shards, digits_baseline, tmp_path, caplog) -> None:
    gone = Path(own_shards["train"]).parent / "train-000001.tar"

    def remove(_path: Path, position) -> None:  # noqa: ANN001
        if position.step == 0 and not position.pruned:
            gone.unlink()

    config = _config(own_shards, digits_baseline, tmp_path / "run")
    with caplog.at_level("WARNING", logger="singe_dist.data.streams"):
        report = PruneJob(config, checkpoint_hook=remove, log=lambda _m: None).run()
    warnings = [r.getMessage() for r in caplog.records if "has disappeared" in r.getMessage()]
    assert warnings == [f"training shard {gone} has disappeared: it is skipped from now on (2 of 3 shards left)"]
    assert [r["skipped_samples"] for r in report["steps"]] == [1, 1]  # counted once, in the report
    assert report["final"]["samples"] == 360 and (tmp_path / "run" / "pruned.pt").is_file()


def test_all_training_shards_gone_is_one_line(own_shards) -> None:
    config = load_config(DEMO_CONFIG, [f"data.train={own_shards['train']}", f"data.val={own_shards['val']}",
                                       "data.image_size=16", "data.resize_size=16", "data.num_workers=0"])
    streams = DataStreams(config.data, 10)
    next(streams.train(0))
    for shard in Path(own_shards["train"]).parent.glob("train-*.tar"):
        shard.unlink()
    with pytest.raises(SingeError) as err:
        streams.calibration(1, 1)
    assert str(err.value).startswith("all 3 training shards have disappeared during the run (the first is ")
    assert str(err.value).endswith("train-000000.tar): restore them and continue with --resume")


def test_a_validation_shard_that_disappears_stops_the_run_and_a_resume_after_restoring_it_finishes(
        own_shards, digits_baseline, reference, tmp_path) -> None:
    val = Path(own_shards["val"].replace("{000000..000000}", "000000"))
    aside = tmp_path / "aside.tar"

    def move(_path: Path, position) -> None:  # noqa: ANN001
        if position.step == 1 and not position.pruned:
            val.rename(aside)

    run_dir = tmp_path / "run"
    config = _config(own_shards, digits_baseline, run_dir)
    with pytest.raises(SingeError) as err:
        PruneJob(config, checkpoint_hook=move, log=lambda _m: None).run()
    assert str(err.value) == (f"validation data changed during the run: 0 samples evaluated, 360 at the start "
                              f"({val} has disappeared); restore it and continue with --resume")
    assert read_checkpoint(run_dir / CHECKPOINT_NAME)["position"]["step"] == 1  # step 1's work is kept
    with pytest.raises(SingeError, match="matches no file"):  # resuming before restoring it: one line
        PruneJob(config, resume=True, log=lambda _m: None).run()
    aside.rename(val)
    PruneJob(config, resume=True, log=lambda _m: None).run()
    _same_result(run_dir, reference)  # the same bytes under another path: the uninterrupted result


# ---------------------------------------------------------------------------------- checkpoints on load
def _resume_error(shards, baseline, run_dir: Path, **extra) -> str:  # noqa: ANN001
    with pytest.raises(SingeError) as err:
        PruneJob(_config(shards, baseline, run_dir, **extra), resume=True, log=lambda _m: None).run()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_whose_plan_does_not_fit_its_weights_is_refused(
        digits_shards, digits_baseline, reference, tmp_path) -> None:
    for name in ("pruned.pt", CHECKPOINT_NAME):
        ckpt = torch.load(reference / name, weights_only=True)
        ckpt["plan"]["steps"] = ckpt["plan"]["steps"][:1]  # the weights are those of two steps
        (tmp_path / name).parent.mkdir(exist_ok=True)
        torch.save(ckpt, tmp_path / name)
    with pytest.raises(SingeError) as err:
        load_model(tmp_path / "pruned.pt")
    assert re.fullmatch(rf"checkpoint {tmp_path / 'pruned.pt'} does not match the model: \S+ has shape "
                        r"\([\d, ]+\), model expects \([\d, ]+\)", str(err.value)), str(err.value)
    message = _resume_error(digits_shards, digits_baseline, tmp_path)
    assert message.startswith(f"checkpoint {tmp_path / CHECKPOINT_NAME} does not match the model: ")


def test_resume_refuses_checkpoints_that_are_not_its_own(digits_shards, digits_baseline, reference, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy2(reference / "pruned.pt", run_dir / CHECKPOINT_NAME)  # a model, not a job checkpoint
    assert _resume_error(digits_shards, digits_baseline, run_dir) == (
        f"checkpoint {run_dir / CHECKPOINT_NAME} cannot be resumed: it is not a pruning-job checkpoint (no "
        "'position'); pass it as model.checkpoint to start a new run instead")

    shutil.copy2(reference / CHECKPOINT_NAME, run_dir / CHECKPOINT_NAME)
    assert _resume_error(digits_shards, digits_baseline, run_dir, model__arch="resnet18") == (
        f"checkpoint {run_dir / CHECKPOINT_NAME} is for model 'digits_resnet' with 10 classes, the config for "
        "'resnet18' with 10: resume with the run's own config")
    assert _resume_error(digits_shards, digits_baseline, run_dir, prune__steps=1) == (
        f"checkpoint {run_dir / CHECKPOINT_NAME} is at step 2, beyond prune.steps=1: resume with the run's own config")

    data = (reference / CHECKPOINT_NAME).read_bytes()
    (run_dir / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])  # what a non-atomic write would leave
    assert _resume_error(digits_shards, digits_baseline, run_dir).startswith(
        f"checkpoint {run_dir / CHECKPOINT_NAME} cannot be loaded safely: PytorchStreamReader failed reading zip "
        "archive: failed finding central directory")


def test_a_checkpoint_that_would_run_code_is_refused_on_resume_and_the_code_never_runs(
        digits_shards, digits_baseline, tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.makedirs, (str(marker),))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"format": "singe-dist/checkpoint/v1", "plan": Evil()}, run_dir / CHECKPOINT_NAME)
    assert _resume_error(digits_shards, digits_baseline, run_dir) == (
        f"checkpoint {run_dir / CHECKPOINT_NAME} cannot be loaded safely: it refers to os.makedirs, which is not a "
        "tensor or a plain container; weights_only=True refused it before anything in the file was run")
    assert not marker.exists()


def test_atomic_writes_leave_the_previous_file_when_the_writer_fails(tmp_path) -> None:
    path = tmp_path / "report.json"
    atomic_write_text(path, "old")
    from singe_dist.atomic import atomic_write

    def broken(fh) -> None:  # noqa: ANN001
        fh.write("half")
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(SingeError) as err:
        atomic_write(path, broken, binary=False)
    assert str(err.value) == f"cannot write {path}: Permission denied (EACCES); the previous version is intact"
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    with pytest.raises(SingeError, match="nothing was written"):
        atomic_write(tmp_path / "new.json", broken, binary=False)
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "m.pt", model, "digits_resnet", 10)
    with pytest.raises(SingeError) as err:
        save_checkpoint(tmp_path / "m.pt" / "x.pt", model, "digits_resnet", 10)  # a file where a folder should be
    assert str(err.value) == (f"cannot write {tmp_path / 'm.pt' / 'x.pt'}: File exists (EEXIST, {tmp_path / 'm.pt'}); "
                              "nothing was written")


# ---------------------------------------------------------------------------------- binding, tokens, secrets
def test_local_services_bind_loopback_and_the_local_head_uses_token_auth() -> None:
    """Static half; the real runs are tests/test_cluster.py (sockets listed) and the servers below."""
    script = (REPO_ROOT / "cluster" / "start_local_head.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "--node-ip-address=127.0.0.1" in code and "--dashboard-host=127.0.0.1" in code
    assert "0.0.0.0" not in script
    assert "export RAY_AUTH_MODE=token" in code and "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=" in code
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in code  # else Ray swaps 127.0.0.1 for the LAN address
    # the token's value only ever goes to its mode-600 file, never to the output
    uses = [line.strip() for line in code.splitlines() if re.search(r"\$\{?RAY_AUTH_TOKEN\b(?!_PATH)", line)]
    assert uses and all(re.search(r'> "\$TOKEN_PATH"', u) or u.startswith("if [[ -n") for u in uses), uses
    launcher = (REPO_ROOT / "singe_dist" / "distributed" / "ray_launcher.py").read_text()
    assert '_node_ip_address="127.0.0.1"' in launcher and "include_dashboard=False" in launcher
    # every MLflow server the tests start comes from the one helper, which binds the loopback address
    assert '"server", "--host", "127.0.0.1"' in (REPO_ROOT / "tests" / "mlflow_server.py").read_text()
    for test_file in ("test_tracking.py", "test_reliability.py"):
        text = (REPO_ROOT / "tests" / test_file).read_text()
        assert "start_mlflow_server(" in text, test_file


# ---------------------------------------------------------------------------------- memory soak benchmark
def test_memory_soak_benchmark_smoke(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [str(SOAK), "--smoke"])
    runpy.run_path(str(SOAK), run_name="__main__")
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].replace(" ", "") == "|step|RSSMB|deltaMB|" and re.fullmatch(r"\|[-|]+\|", table[1])
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and all(float(r[1]) > 50 for r in rows)
    assert re.search(r"^slope over the second half: [+-]\d+\.\d+ MB/step", out, re.MULTILINE), out


# ---------------------------------------------------------------------------------- MLflow server goes away
@pytest.fixture(scope="module", autouse=True)
def _doomed_server(request, tmp_path_factory):  # noqa: ANN001, ANN202
    """A real MLflow server (SQLite) on 127.0.0.1 that the last test kills: started first, it boots meanwhile.

    Only when that test is selected (``-m "not slow"`` leaves it out).
    """
    if not any("doomed_server" in item.fixturenames for item in request.session.items
               if item.module is request.module):
        yield None
        return
    root = tmp_path_factory.mktemp("doomed-mlflow")
    proc, port = start_mlflow_server(root, {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    try:
        yield proc, port, root
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.fixture()
def doomed_server(_doomed_server):  # noqa: ANN001, ANN201
    return _doomed_server


@pytest.mark.slow
def test_mlflow_server_killed_mid_run_training_finishes_tracking_loss_reported_once_no_secret_leaks(
        doomed_server, digits_shards, digits_baseline, tmp_path) -> None:
    import requests
    from mlflow.tracking import MlflowClient

    proc, port, root = doomed_server
    deadline = time.monotonic() + 300
    while True:  # the server boots while the tests above run
        assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "mlflow server did not answer within 300 s"
        time.sleep(0.5)

    secrets = {"uri": "s3cret-IN-URI", "env": "tok-IN-ENV-0123456789", "ray": "ray-TOKEN-IN-ENV-987"}
    run_dir = tmp_path / "run"
    argv = _prune_argv(digits_shards, digits_baseline, run_dir, prune__steps=3, tracking__enabled="true",
                       tracking__uri=f"http://alice:{secrets['uri']}@127.0.0.1:{port}",
                       tracking__experiment="doomed", tracking__log_model="false")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_TOKEN": secrets["env"],
                "RAY_AUTH_TOKEN": secrets["ray"]})
    err_file = open(tmp_path / "stderr.log", "w")  # noqa: SIM115 - a file: a full stderr pipe would block the job
    job = subprocess.Popen([sys.executable, "-m", "singe_dist.cli", *argv], stdout=subprocess.PIPE,
                           stderr=err_file, text=True, env=env)
    stdout: list[str] = []
    for line in job.stdout:  # kill the server as step 1 ends: steps 2 and 3 and the results are still to log
        stdout.append(line)
        if "after fine-tuning" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            killed = time.monotonic()
            break
    else:
        job.wait(60)
        pytest.fail("the job ended before step 1: " + (tmp_path / "stderr.log").read_text()[-3000:])
    rest, _ = job.communicate(timeout=300)
    after_kill = time.monotonic() - killed
    err_file.close()
    stderr = (tmp_path / "stderr.log").read_text()
    out = "".join(stdout) + rest
    assert job.returncode == 0, stderr[-3000:]

    # training went on to the end: every output is written, the loss of tracking is recorded once
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["step"] for r in report["steps"]] == [1, 2, 3] and "final" in report
    assert {"plan.json", "pruned.pt", CHECKPOINT_NAME} <= {p.name for p in run_dir.iterdir()}
    assert "Connection refused" in report["tracking_lost"] or "Max retries" in report["tracking_lost"]
    assert stderr.count("MLflow tracking lost") == 1, stderr
    assert "incomplete: tracking was lost mid-run" in out
    assert after_kill < 90, f"the job took {after_kill:.0f} s after the server died: MLflow retries unbounded?"

    # what was logged before the server died is in its database; no secret anywhere
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("doomed").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "top1")][:1] == [0]
    assert run.data.params["tracking.uri"] == f"http://alice:<redacted>@127.0.0.1:{port}"
    stored = json.dumps([run.data.params, run.data.tags])
    for secret in secrets.values():
        assert secret not in out and secret not in stderr and secret not in stored, secret


def test_atomic_writes_get_ordinary_file_permissions(tmp_path) -> None:
    """A report written atomically is readable like one written with open(): not mkstemp's 0600."""
    import os

    from singe_dist.atomic import atomic_write_text

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.json", "{}")
        assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "report.json", 0o640)
        atomic_write_text(tmp_path / "report.json", "{}")  # an existing file keeps its mode
        assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
