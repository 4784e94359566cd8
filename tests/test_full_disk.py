"""A full disk and failing writes: one line, and the previous file stays intact (docs/RELIABILITY.md).

The full disk is a real tmpfs of its own mount namespace, filled up (where the test may mount; else a
real ``RLIMIT_FSIZE`` refusal of the same write), in a forked child of the test process.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch

from singe_dist.atomic import atomic_write_text
from singe_dist.checkpoint import save_checkpoint
from singe_dist.engine.loop import PruneJob
from singe_dist.engine.run_dir import CHECKPOINT_NAME, read_job_checkpoint
from singe_dist.errors import SingeError

from .support import fast_job_config, fork, wait


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
    pid = fork(lambda: _mount_tmpfs(tmp / "probe", "64k"), None, tmp / "probe.log")
    return None if wait(pid, 30) == 0 else (tmp / "probe.log").read_text().strip().splitlines()[-1]


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
    config = fast_job_config(digits_shards, digits_baseline, run_dir)

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

    assert wait(fork(child, None, tmp_path / "child.log")) == 0, (tmp_path / "child.log").read_text()[-3000:]
    outcome = json.loads(result.read_text())
    reason = "No space left on device (ENOSPC)" if how == "ENOSPC-tmpfs" else "File too large (EFBIG)"
    assert outcome["error"] == f"cannot write {run_dir / CHECKPOINT_NAME}: {reason}; the previous version is intact"
    assert [f for f in outcome["files"] if f.endswith(".tmp")] == []  # the partial temporary file was removed
    ckpt, *_ = read_job_checkpoint(saved / CHECKPOINT_NAME, config)
    assert ckpt["position"] == {"step": 0, "pruned": False, "iteration": 0}



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
