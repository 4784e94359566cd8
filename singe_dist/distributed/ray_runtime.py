"""The Ray runtime a launch runs on: connect to a cluster or start a local one, and stop it in bounded time.

Ray reads some settings when it is imported, so :func:`connect` sets them before ``import ray``; the
other modules of this package import Ray only inside functions, after it. Workers of the local
runtime run in the driver's own Python environment: Ray's ``uv run`` propagation is switched off (it
re-runs the driver's ``uv`` command line, relative path included, in every worker).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any

from singe_dist.errors import SingeError


def _loopback_interface() -> str | None:
    try:
        names = [name for _i, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


def _ray_environment(local: bool) -> None:
    """Settings Ray reads when it is imported (so set before ``import ray``) and that its processes inherit.

    * ``RAY_ENABLE_UV_RUN_RUNTIME_ENV=0``: under ``uv run`` (``make demo``), Ray would start every
      worker with the driver's ``uv run`` command line inside a copy of the working directory
      (``.bootstrap/bin/uv`` is not in that copy: workers never start) and build a virtualenv per
      worker. Workers of the local runtime are children of this process and use its Python; on a
      cluster the environment comes with the cluster (docs/CLUSTER.md).
    * local runtime only: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps 127.0.0.1 as the node address
      (else Ray swaps in the machine's address and binds its servers to all interfaces), Gloo uses the
      loopback interface, and the Ray Train controller's polling is not echoed.
    """
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        lo = _loopback_interface()
        if lo:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", lo)
    if "ray" in sys.modules:  # imported already (tests, notebooks): the constants were read at import
        from ray._private import ray_constants

        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
        if local and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
            ray_constants.ENABLE_RAY_CLUSTER = False


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """Connect to a Ray cluster (or start a local runtime) with a clear error when it is unreachable."""
    address = address or os.environ.get("RAY_ADDRESS")
    _ray_environment(local=not address)
    import ray

    if ray.is_initialized():
        return ray
    if address and address != "auto":
        _probe(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True, configure_logging=False)
        else:
            _start_local(ray, num_cpus)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SingeError(f"cannot connect to the Ray cluster at {address}: {first}") from None
    return ray


def _start_local(ray: Any, num_cpus: int | None) -> None:
    """A local runtime for laptops and tests: loopback only, no dashboard, workers' output not echoed.

    Rank 0's progress is relayed instead (:class:`singe_dist.distributed.kv_relay.LogRelay`). Ray
    announces the token auth it turns on for a new local cluster; that is the expected state, not news
    for the user. ``address="local"``: always a runtime of our own. Without it ``ray.init()`` joins the
    last cluster ``ray start`` recorded in /tmp/ray/ray_current_cluster (someone else's, maybe busy or
    gone), which is not what "no distributed.address" means (docs/CLUSTER.md).
    """
    import logging

    quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, _node_ip_address="127.0.0.1")
    finally:
        quiet.setLevel(level)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at a Ray address (``ray.init`` would retry for minutes)."""
    from urllib.parse import urlparse

    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise SingeError(f"cannot connect to the Ray cluster at {address}: expected host:port or ray://host:port")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise SingeError(f"cannot connect to the Ray cluster at {address}: {exc.strerror or exc}") from None


def stop_ray(ray: Any, grace: float = 20.0) -> None:
    """Disconnect (a cluster: the controller this driver owns, and its workers, end) or stop the local
    runtime (raylet, GCS and every worker). Bounded: a shutdown that hangs ends the process."""
    done = threading.Event()

    def shutdown() -> None:
        try:
            ray.shutdown()
        finally:
            done.set()

    threading.Thread(target=shutdown, name="singe-dist-shutdown", daemon=True).start()
    if not done.wait(grace):
        print(f"singe-dist: Ray did not shut down within {grace:g} s; exiting", file=sys.stderr, flush=True)
        os._exit(1)
