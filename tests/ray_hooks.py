"""Runtime-environment hooks for tests (``RAY_RUNTIME_ENV_HOOK=tests.ray_hooks.<name>``)."""

from __future__ import annotations

from typing import Any

MISSING_PYTHON = "/nonexistent/singe-dist-test/bin/python"


def missing_python(runtime_env: dict[str, Any] | None) -> dict[str, Any]:
    """Every worker process is started with a Python that does not exist: no worker can ever start
    (what happened when Ray re-ran a bootstrapped ``.bootstrap/bin/uv`` in its working-dir copy)."""
    return {**(runtime_env or {}), "py_executable": MISSING_PYTHON}
