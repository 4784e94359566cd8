"""A real local Ray head for tests: 127.0.0.1 only, token authentication on, always stopped.

    from tests.ray_head import local_ray_head

    with local_ray_head(num_cpus=2) as head:
        # every path absolute (data.*, model.checkpoint, run.out_dir): the job runs in Ray's copy of "."
        sets = ["--set", f"run.out_dir={tmp_path / 'run'}", ...]
        result = head.submit(["python", "jobs/prune.py", "--config", "jobs/configs/demo.yaml", *sets],
                             working_dir=".", runtime_env="jobs/runtime_env.yaml", timeout=600)
        assert result.returncode == 0, result.stdout

or, as a fixture (one head per test module): ``from tests.ray_head import ray_head  # noqa: F401``.

The head is started and stopped with cluster/start_local_head.sh and cluster/stop_local_head.sh
(so the tests exercise the scripts people use), on free ports, with a state dir of its own and
its own token; stopping ends exactly its processes, never other Ray instances on the machine.
Clients must run with ``head.env`` (``head.client_env()`` merges it into os.environ): the ray
CLI only sends the token when RAY_AUTH_MODE=token, and Ray only keeps 127.0.0.1 as an address
with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. Prefer subprocesses (ray CLI) over in-process clients:
Ray reads RAY_AUTH_MODE once per process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
START_SCRIPT = REPO_ROOT / "cluster" / "start_local_head.sh"
STOP_SCRIPT = REPO_ROOT / "cluster" / "stop_local_head.sh"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
PORT_NAMES = ("port", "dashboard_port", "client_server_port", "dashboard_agent_port",
              "dashboard_metrics_port", "autoscaler_metrics_port")
# Variables of the caller that would change which head or token a client uses.
CLIENT_VARS_TO_DROP = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def ray_executable() -> str:
    """The ray CLI of the project's environment (the one running the tests)."""
    candidate = VENV_BIN / "ray"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise RuntimeError("no `ray` executable: install the project environment (make env)")
    return found


def free_ports(count: int) -> list[int]:
    """Distinct ports free on 127.0.0.1 right now (held together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass(frozen=True)
class RayHead:
    """A running local head, as started by :func:`local_ray_head`."""

    address: str          # GCS address, "127.0.0.1:<port>": ray.init(address=...), ray status --address
    dashboard_url: str    # "http://127.0.0.1:<port>": ray job submit --address, JobSubmissionClient
    env: dict[str, str]   # what a client needs: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, RAY_AUTH_MODE,
                          # RAY_AUTH_TOKEN_PATH, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    state_dir: Path       # client.env, head.pgid, the token; Ray's temp dir is state_dir/"ray"
                          # (logs: state_dir/"ray/session_latest/logs")
    token_path: Path
    pgid: int             # process group of the head's daemons (workers and drivers are descendants)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def client_env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        """``base`` (default os.environ) without other Ray addresses/tokens, plus ``env`` and ``extra``."""
        merged = {k: v for k, v in (os.environ if base is None else base).items() if k not in CLIENT_VARS_TO_DROP}
        merged.update(self.env)
        merged.update(extra)
        return merged

    def ray(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None,
            cwd: str | Path = REPO_ROOT) -> subprocess.CompletedProcess:
        """Runs ``ray <args>`` as a client of this head; output in ``.stdout`` (stderr merged)."""
        return subprocess.run(
            [ray_executable(), *args], env=self.client_env() if env is None else env, cwd=cwd,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
        )

    def submit(self, entrypoint: Sequence[str], *, working_dir: str | Path | None = None,
               runtime_env: str | Path | None = None, extra_args: Sequence[str] = (),
               timeout: float = 600, cwd: str | Path = REPO_ROOT) -> subprocess.CompletedProcess:
        """``ray job submit --address <dashboard> [...] -- <entrypoint>``; waits for the job's end.

        Return code 0 means the job succeeded; ``.stdout`` has the job's log and the CLI's output.
        """
        args = ["job", "submit", "--address", self.dashboard_url]
        if working_dir is not None:
            args += ["--working-dir", str(working_dir)]
        if runtime_env is not None:
            args += ["--runtime-env", str(runtime_env)]
        return self.ray(*args, *extra_args, "--", *entrypoint, timeout=timeout, cwd=cwd)

    def processes(self) -> dict[int, str]:
        """Live processes of the head, {pid: name}: its process group and their descendants."""
        return head_processes(self.pgid)

    def listening_sockets(self) -> list[tuple[str, int, int]]:
        """TCP sockets the head's processes listen on, as (address, port, pid)."""
        pids = set(self.processes())
        return [(addr, port, pid) for addr, port, pid in listening_tcp_sockets() if pid in pids]

    def stop(self, grace: int = 5) -> subprocess.CompletedProcess:
        """Runs cluster/stop_local_head.sh for this head (idempotent)."""
        return subprocess.run(
            [str(STOP_SCRIPT), "--state-dir", str(self.state_dir), "--grace", str(grace)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=grace + 60, check=False,
        )


def head_processes(pgid: int) -> dict[int, str]:
    """{pid: comm} of the live members of process group ``pgid`` and all their descendants."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        table[int(entry.name)] = (comm, state, int(ppid), int(pgrp))
    members = {pid for pid, (_, _, _, pgrp) in table.items() if pgrp == pgid}
    grew = True
    while grew:
        children = {pid for pid, (_, _, ppid, _) in table.items() if ppid in members and pid not in members}
        members |= children
        grew = bool(children)
    return {pid: table[pid][0] for pid in members if table[pid][1] != "Z"}


def _proc_address(hex_addr: str) -> str:
    if len(hex_addr) == 8:  # IPv4, little-endian
        return str(ipaddress.IPv4Address(bytes.fromhex(hex_addr)[::-1]))
    raw = b"".join(bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, 32, 8))
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped) if address.ipv4_mapped else str(address)


def listening_tcp_sockets() -> list[tuple[str, int, int]]:
    """Every listening TCP socket of this user's processes, as (address, port, pid); from /proc."""
    inodes: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                inodes[fields[9]] = (_proc_address(hex_addr), int(hex_port, 16))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        found.append((*inodes[target[8:-1]], int(entry.name)))
    return found


def is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _start(num_cpus: int | None, num_gpus: int | None, state_dir: Path, ready_timeout: int) -> tuple[subprocess.CompletedProcess, dict[str, int]]:
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
    args = [str(START_SCRIPT), "--state-dir", str(state_dir), "--ready-timeout", str(ready_timeout), "--ray", ray_executable()]
    for name, port in ports.items():
        args += [f"--{name.replace('_', '-')}", str(port)]
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS_TO_DROP and not k.startswith("SINGE_RAY_")}
    result = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=ready_timeout + 240, check=False)
    return result, ports


def _read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value
    return env


@contextlib.contextmanager
def local_ray_head(num_cpus: int | None = 2, *, num_gpus: int | None = None, ready_timeout: int = 180,
                   stop_grace: int = 5, attempts: int = 2) -> Iterator[RayHead]:
    """Starts a local head (cluster/start_local_head.sh) and always stops it on exit.

    The state dir (Ray's logs) is deleted after a clean exit and kept, with a warning naming it,
    when the body raised. ``attempts`` retries the start on fresh ports (another process may
    take a free port between the choice and Ray's bind).
    """
    # Short path under /tmp: Ray's Unix sockets live below it (107-byte limit).
    state_dir = Path(tempfile.mkdtemp(prefix="sray-", dir="/tmp"))
    head = None
    failed = True
    try:
        for attempt in range(1, attempts + 1):
            result, ports = _start(num_cpus, num_gpus, state_dir, ready_timeout)
            if result.returncode == 0:
                break
            if attempt == attempts:
                raise RuntimeError(f"start_local_head.sh failed ({result.returncode}):\n{result.stdout[-4000:]}")
        env = _read_env_file(state_dir / "client.env")
        head = RayHead(
            address=env["RAY_ADDRESS"],
            dashboard_url=env["RAY_API_SERVER_ADDRESS"],
            env=env,
            state_dir=state_dir,
            token_path=Path(env["RAY_AUTH_TOKEN_PATH"]),
            pgid=int((state_dir / "head.pgid").read_text()),
            ports=ports,
        )
        yield head
        failed = False
    finally:
        pgid_file = state_dir / "head.pgid"
        pgid = head.pgid if head else (int(pgid_file.read_text()) if pgid_file.is_file() else None)
        stop = subprocess.run([str(STOP_SCRIPT), "--state-dir", str(state_dir), "--grace", str(stop_grace)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=stop_grace + 60, check=False)
        # Belt and braces: whatever the script left (it should leave nothing) is killed here.
        leftovers = head_processes(pgid) if pgid and pgid != os.getpgid(0) else {}
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        if failed or stop.returncode != 0 or leftovers:
            warnings.warn(f"local Ray head: logs kept in {state_dir} (stop: {stop.stdout.strip()[-500:]})", stacklevel=2)
        else:
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """One local head (2 CPUs) per test module."""
    with local_ray_head(num_cpus=2) as head:
        yield head
