"""A real ``mlflow server`` for tests: SQLite store, proxied artifacts, bound to 127.0.0.1 only."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """Start a server on a free loopback port in its own process group; ``root/server.log`` gets its output.

    Returns at once (the server takes a while to answer); the caller waits for it and stops the group.
    """
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    cmd = [str(exe) if exe.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    return proc, port
