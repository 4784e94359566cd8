"""Whether the tracking store answers: checked once at start-up, and bounded in time ever after.

A server that does not answer fails the job at start-up, within ``tracking.connect_timeout_s``, with
one line naming it, before the job does any work. MLflow's own client retries a failed request for
about four minutes by default; for an HTTP store the tracker bounds that (:data:`HTTP_RETRY_DEFAULTS`,
unless the variables are set), so losing the server mid-run pauses training for seconds, once.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from singe_dist.errors import SingeError
from singe_dist.tracking.redaction import redact, short_error
from singe_dist.tracking.store import is_http, sqlite_path

T = TypeVar("T")

# MLflow's HTTP client settings for a remote store, unless the user set them: a dead server costs
# 1 + 2 s of back-off (+ jitter) per request instead of ~4 minutes, a hung one 3 x 30 s, and the
# tracker stops logging after the first failure.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_HINT = "start it, fix tracking.uri / MLFLOW_TRACKING_URI, or set tracking.enabled=false"


def _request_options(uri: str, experiment: str, timeout_s: float) -> dict[str, Any]:
    """``requests.get`` arguments with the credentials MLflow's client would send.

    Those are MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN and the TLS options: without them a server
    behind authentication would look unreachable to the check while MLflow itself could log to it.
    """
    kwargs: dict[str, Any] = {"params": {"experiment_name": experiment}, "timeout": (timeout_s, timeout_s)}
    try:
        from mlflow.utils.credentials import get_default_host_creds

        creds = get_default_host_creds(uri)
        if creds.username and creds.password:
            kwargs["auth"] = (creds.username, creds.password)
        elif creds.token:
            kwargs["headers"] = {"Authorization": f"Bearer {creds.token}"}
        if creds.ignore_tls_verification:
            kwargs["verify"] = False
        elif creds.server_cert_path:
            kwargs["verify"] = creds.server_cert_path
        if creds.client_cert_path:
            kwargs["cert"] = creds.client_cert_path
    except Exception:  # noqa: BLE001 - an older MLflow: no credentials beyond those in the URI
        pass
    return kwargs


def _get(url: str, shown: str, timeout_s: float, kwargs: dict[str, Any]) -> Any:
    """One GET; a time-out or a failed connection becomes the one-line SingeError that names the server."""
    import requests

    started = time.monotonic()
    try:
        return requests.get(url, **kwargs)
    except requests.exceptions.Timeout:
        raise SingeError(f"MLflow tracking server {shown} did not answer within {timeout_s:g} s "
                         f"(tracking.connect_timeout_s): {_HINT}") from None
    except requests.exceptions.RequestException as exc:
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        reason = errno.group(1).strip() if errno else type(exc).__name__
        took = time.monotonic() - started
        raise SingeError(f"MLflow tracking server {shown} is not reachable ({reason}, after {took:.1f} s): {_HINT}") from None


def check_reachable(uri: str, timeout_s: float, experiment: str = "Default") -> None:
    """Raise a one-line :class:`SingeError` unless an MLflow server answers at ``uri`` within ``timeout_s``.

    One GET of the experiments API, no retries (MLflow's own client retries for minutes). Any answer
    of the MLflow REST API counts (200, or 404 "no such experiment"); refused connections, time-outs,
    rejected credentials, and servers that are not MLflow are errors.
    """
    shown = redact(uri)
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name"
    response = _get(url, shown, timeout_s, _request_options(uri, experiment, timeout_s))
    if response.status_code in (401, 403):
        raise SingeError(f"MLflow tracking server {shown} refused the credentials (HTTP {response.status_code}): "
                         "set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    try:
        body = response.json()
    except ValueError:
        body = None
    mlflow_answer = response.status_code == 200 or (
        response.status_code == 404 and isinstance(body, dict) and "error_code" in body)
    if not mlflow_answer:
        raise SingeError(f"MLflow tracking server {shown} answered HTTP {response.status_code} to the experiments "
                         f"API: is it an MLflow server (and the URI its root)? {_HINT}")


def open_client(uri: str, timeout_s: float, experiment: str) -> Any:
    """An ``MlflowClient`` on ``uri``, once the store can be used: a one-line SingeError otherwise.

    A SQLite store gets its directory; a server must answer :func:`check_reachable`, and MLflow's
    retries are bounded (:data:`HTTP_RETRY_DEFAULTS`) before the client exists, since it reads them then.
    """
    from mlflow.tracking import MlflowClient

    sqlite = sqlite_path(uri)
    if sqlite is not None:
        try:
            sqlite.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SingeError(f"MLflow tracking store {redact(uri)}: cannot create {sqlite.parent} "
                             f"({exc.strerror or exc})") from None
    if is_http(uri):
        check_reachable(uri, timeout_s, experiment)
        for key, value in HTTP_RETRY_DEFAULTS.items():
            os.environ.setdefault(key, value)
    return MlflowClient(tracking_uri=uri)


def _unusable(shown: str, exc: BaseException) -> SingeError:
    return SingeError(f"MLflow tracking store {shown} cannot be used: {short_error(exc)}")


def call_with_deadline(fn: Callable[[], T], shown: str, deadline_s: float | None) -> T:
    """``fn()``, turned into a one-line SingeError naming the store ``shown`` when it fails or hangs.

    With a deadline (remote stores) ``fn`` runs in a daemon thread that is left behind if it hangs:
    MLflow's client may wait far longer than the user's ``tracking.connect_timeout_s``.
    """
    if deadline_s is None:
        try:
            return fn()
        except SingeError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _unusable(shown, exc) from None
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    thread = threading.Thread(target=target, name="mlflow-connect", daemon=True)
    thread.start()
    thread.join(deadline_s)
    if thread.is_alive():
        raise SingeError(f"MLflow tracking store {shown} did not answer within {deadline_s:g} s "
                         "(tracking.connect_timeout_s): check tracking.uri / MLFLOW_TRACKING_URI, "
                         "or set tracking.enabled=false")
    if "error" in box:
        if isinstance(box["error"], SingeError):
            raise box["error"]
        raise _unusable(shown, box["error"])
    return box["value"]


__all__ = ["HTTP_RETRY_DEFAULTS", "call_with_deadline", "check_reachable", "open_client"]
