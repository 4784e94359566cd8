"""MLflow tracking (design notes, section 7): one MLflow run per job, logged from rank 0 only.

* params: the flattened config (``section.key``), secrets redacted;
* tags: model, criterion, git commit, Ray job id, the run directory;
* metrics: baseline at step 0, one value per pruning step t = 1..T, ``finetune_loss`` every
  ``finetune.log_every`` iterations (its step is the global fine-tune iteration), ``final_*`` at the end;
* artifacts: plan.json, report.json, PNG plots, and the pruned model (signature + input example),
  optionally registered, beside it ``model_onnx/model.onnx`` (verified through ONNX Runtime).

The tracking URI is ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite file beside the run
directory (no server needed). A server that does not answer fails the job at start-up, within
``tracking.connect_timeout_s``, with one line naming it. A server lost mid-run never stops training:
the tracker warns once, stops logging and records why in :attr:`MlflowTracker.lost` (the loop copies
it into report.json as ``tracking_lost``). MLflow's client retries a failed request for about four
minutes by default; for an HTTP store the tracker bounds that (:data:`HTTP_RETRY_DEFAULTS`, unless
the variables are set), so losing the server pauses training for seconds, once.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from torch import nn

from singe_dist.config import JobConfig
from singe_dist.errors import SingeError
from singe_dist.report import final_metrics, is_number
from singe_dist.tracking.base import NullTracker, Tracker

RUN_FILE = "mlflow_run.json"  # in the run directory: a resumed job continues the same MLflow run
MODEL_NAME = "model"
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 5000
REDACTED = "<redacted>"
# MLflow's HTTP client settings for a remote store, unless the user set them: a dead server costs
# 1 + 2 s of back-off (+ jitter) per request instead of ~4 minutes, a hung one 3 x 30 s, and the
# tracker stops logging after the first failure.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

# ------------------------------------------------------------------------------------------ secrets
_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential"
                         r"|auth|session[_-]?key|signature)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^/@:\s]*):(?P<pw>[^/@\s]+)@")
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<key>[^=&;#\s]+)=(?P<value>[^&;#\s]*)")
_TOKEN_LIKE = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|dapi[0-9a-f]{16,}"
                         r"|sk-[A-Za-z0-9_\-]{16,}|xox[abposr]-[A-Za-z0-9\-]{10,}|(?:AKIA|ASIA)[A-Z0-9]{16}"
                         r"|hf_[A-Za-z0-9]{20,}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]+)")


def redact(text: str) -> str:
    """``text`` with credentials removed: URL passwords, secret query parameters, well-known token formats."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _QUERY_PARAM.sub(lambda m: f"{m['sep']}{m['key']}={REDACTED}" if m["value"] and is_secret_key(m["key"])
                            else m[0], text)
    return _TOKEN_LIKE.sub(REDACTED, text)


def is_secret_key(key: str) -> bool:
    """A key whose value is a secret by its name (``...password``, ``...token``, ``sig``...)."""
    name = key.rsplit(".", 1)[-1]
    return bool(_SECRET_KEY.search(name)) or name.lower() in ("sig", "pwd", "key")


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    text = redact(text)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """MLflow params: string values of at most 6000 characters; secret keys dropped, secret values redacted."""
    return {key: _param_value(value) for key, value in params.items() if not is_secret_key(key)}


def _tag_value(value: Any) -> str:
    text = redact(" ".join(str(value).split()))
    return text if len(text) <= MAX_TAG_LENGTH else text[: MAX_TAG_LENGTH - 3] + "..."


# ------------------------------------------------------------------------------------------ URI
def resolve_uri(config: JobConfig) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<parent of run.out_dir>/mlflow.db``."""
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    parent = Path(config.run.out_dir).expanduser().absolute().parent
    return f"sqlite:///{parent / 'mlflow.db'}"


def _scheme(uri: str) -> str:
    if uri.startswith("databricks"):
        return "databricks"
    return urlsplit(uri).scheme.lower() if "://" in uri or uri.startswith("file:") else ""


def _is_http(uri: str) -> bool:
    return _scheme(uri) in ("http", "https")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def local_store_path(uri: str) -> str | None:
    """The file or directory a file-backed store writes (``sqlite:///``, ``file:``, a plain path), as written
    in the URI (relative stays relative); None for a server or an in-memory store."""
    sqlite = _sqlite_path(uri)
    if sqlite is not None or uri.startswith("sqlite:"):
        return None if sqlite is None else str(sqlite)
    scheme = _scheme(uri)
    if scheme == "file":
        return urlsplit(uri).path or None
    return uri if scheme == "" else None


def ui_hint(config: JobConfig) -> str:
    """The command that opens the MLflow UI on this job's tracking store (``open <address>`` for a server).

    ``mlflow ui --backend-store-uri sqlite:////abs/runs/mlflow.db`` for the SQLite default; ``mlflow ui``
    listens on http://127.0.0.1:5000.
    """
    uri = resolve_uri(config)
    shown = redact(uri)
    if _is_http(uri):
        return f"open {shown.rstrip('/')}"
    if _scheme(uri).startswith("databricks"):
        return "open the Experiments page of your Databricks workspace"
    if _scheme(uri) == "" and not uri.startswith("sqlite:"):  # a bare path is a file store
        shown = Path(uri).expanduser().absolute().as_uri()
    return f"mlflow ui --backend-store-uri {shown}"  # it serves http://127.0.0.1:5000


def check_reachable(uri: str, timeout_s: float, experiment: str = "Default") -> None:
    """Raise a one-line :class:`SingeError` unless an MLflow server answers at ``uri`` within ``timeout_s``.

    One GET of the experiments API, no retries (MLflow's own client retries for minutes). Any answer
    of the MLflow REST API counts (200, or 404 "no such experiment"); refused connections, time-outs,
    rejected credentials, and servers that are not MLflow are errors.
    """
    import requests

    shown = redact(uri)
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/get-by-name"
    kwargs: dict[str, Any] = {"params": {"experiment_name": experiment}, "timeout": (timeout_s, timeout_s)}
    try:  # the credentials MLflow's client would send (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, TLS options)
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
    hint = "start it, fix tracking.uri / MLFLOW_TRACKING_URI, or set tracking.enabled=false"
    started = time.monotonic()
    try:
        response = requests.get(url, **kwargs)
    except requests.exceptions.Timeout:
        raise SingeError(f"MLflow tracking server {shown} did not answer within {timeout_s:g} s "
                         f"(tracking.connect_timeout_s): {hint}") from None
    except requests.exceptions.RequestException as exc:
        errno = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        reason = errno.group(1).strip() if errno else type(exc).__name__
        took = time.monotonic() - started
        raise SingeError(f"MLflow tracking server {shown} is not reachable ({reason}, after {took:.1f} s): {hint}") from None
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
                         f"API: is it an MLflow server (and the URI its root)? {hint}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def _ray_job_id() -> str | None:
    job = os.environ.get("RAY_JOB_ID")
    if job:
        return job
    ray = sys.modules.get("ray")  # only when Ray is already imported and initialised: never start it
    try:
        if ray is not None and ray.is_initialized():
            return str(ray.get_runtime_context().get_job_id())
    except Exception:  # noqa: BLE001
        return None
    return None


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``log_model`` uses it) at ``uri`` for a moment, then restore it.

    The model registry follows (MLflow's default registry is the tracking store) unless the user set
    ``MLFLOW_REGISTRY_URI``.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = os.environ.get("MLFLOW_TRACKING_URI")
    old = getattr(tracking_utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


class _DropPickleWarning(logging.Filter):
    """We log pickles on purpose (see ``_log_model``): MLflow's warning about them is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Pickle or CloudPickle" not in record.getMessage()


# ------------------------------------------------------------------------------------------ tracker
class MlflowTracker:
    """The :class:`~singe_dist.tracking.base.Tracker` that logs a job to MLflow (rank 0 only).

    The constructor resolves the URI, checks the server answers (a :class:`SingeError` otherwise) and
    finds or creates the experiment, so that a tracking problem stops the job before any work.
    """

    def __init__(self, config: JobConfig) -> None:
        from mlflow.tracking import MlflowClient

        self.config = config
        self.uri = resolve_uri(config)
        self.shown_uri = redact(self.uri)
        self.run_dir = Path(config.run.out_dir).expanduser().absolute()
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_uri: str | None = None  # the logged model (``models:/...``), after finish
        self.lost: str | None = None  # why tracking stopped mid-run, if it did
        timeout = config.tracking.connect_timeout_s
        sqlite = _sqlite_path(self.uri)
        if sqlite is not None:
            try:
                sqlite.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SingeError(f"MLflow tracking store {self.shown_uri}: cannot create {sqlite.parent} "
                                 f"({exc.strerror or exc})") from None
        if _is_http(self.uri):
            check_reachable(self.uri, timeout, config.tracking.experiment)
            for key, value in HTTP_RETRY_DEFAULTS.items():
                os.environ.setdefault(key, value)
        self.client = MlflowClient(tracking_uri=self.uri)
        local = sqlite is not None or _scheme(self.uri) in ("", "file")
        self.experiment_id = self._call_with_deadline(self._experiment, None if local else timeout + 5)

    # -------------------------------------------------------------------------------- set-up
    def _call_with_deadline(self, fn: Any, deadline_s: float | None) -> Any:
        """``fn()``, turned into a one-line SingeError when it fails or (remote stores) hangs."""
        if deadline_s is None:
            try:
                return fn()
            except SingeError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise SingeError(f"MLflow tracking store {self.shown_uri} cannot be used: {_short(exc)}") from None
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
            raise SingeError(f"MLflow tracking store {self.shown_uri} did not answer within {deadline_s:g} s "
                             "(tracking.connect_timeout_s): check tracking.uri / MLFLOW_TRACKING_URI, "
                             "or set tracking.enabled=false")
        if "error" in box:
            if isinstance(box["error"], SingeError):
                raise box["error"]
            raise SingeError(f"MLflow tracking store {self.shown_uri} cannot be used: {_short(box['error'])}")
        return box["value"]

    def _experiment(self) -> str:
        name = self.config.tracking.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage != "active":
                raise SingeError(f"MLflow experiment {name!r} is deleted in {self.shown_uri}: restore it "
                                 f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set "
                                 "tracking.experiment to another name")
            return exp.experiment_id
        location = None
        sqlite = _sqlite_path(self.uri)
        if sqlite is not None:  # beside the database, not in whatever the working directory is
            location = (sqlite.parent / "mlartifacts").absolute().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another job created it meanwhile
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    # -------------------------------------------------------------------------------- protocol
    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        cfg = self.config
        all_tags = {"model": cfg.model.arch, "criterion": cfg.criterion.name, **{k: str(v) for k, v in tags.items()},
                    "run_dir": str(self.run_dir)}
        if "mlflow.source.git.commit" not in all_tags:  # a caller (a Ray driver) may know it better
            commit = git_commit()
            if commit:
                all_tags["mlflow.source.git.commit"] = commit
        if "ray.job_id" not in all_tags:
            ray_job = _ray_job_id()
            if ray_job:
                all_tags["ray.job_id"] = ray_job
        resumed = self._previous_run()
        try:
            if resumed is not None:
                self.run_id = resumed.info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                previous_error = resumed.data.tags.get("error")
                if previous_error is not None:
                    all_tags["resumed_after"] = previous_error
                    self.client.delete_tag(self.run_id, "error")
                all_tags["resumes"] = str(int(resumed.data.tags.get("resumes", "0")) + 1)
                known = resumed.data.params
            else:
                name = cfg.tracking.run_name or f"{cfg.criterion.name}-{cfg.model.arch}-{self.run_dir.name}"
                run = self.client.create_run(self.experiment_id, run_name=name)
                self.run_id = run.info.run_id
                known = {}
                self._write_run_file()
            values = {k: v for k, v in safe_params(params).items() if k not in known}
            items = [Param(k, v) for k, v in values.items()]
            tag_items = [RunTag(k, _tag_value(v)) for k, v in all_tags.items()]
            for i in range(0, max(len(items), len(tag_items)), 100):
                self.client.log_batch(self.run_id, params=items[i:i + 100], tags=tag_items[i:i + 100])
        except SingeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the job has not started work yet: stop it with one line
            raise SingeError(f"MLflow tracking store {self.shown_uri}: cannot start the run: {_short(exc)}") from None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if not self._active():
            return
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, int(step)) for key, value in metrics.items() if is_number(value)]
        if batch:
            self._guard("logging metrics", lambda: self.client.log_batch(self.run_id, metrics=batch))

    def log_step(self, row: dict[str, Any], relevance: dict[str, Any] | None) -> None:
        if not self._active() or not relevance:
            return
        from singe_dist.tracking.plots import plot_relevance_histogram

        step = int(row.get("step", 0))

        def log() -> None:
            with tempfile.TemporaryDirectory(prefix="singe-mlflow-") as tmp:
                png = plot_relevance_histogram(relevance, Path(tmp) / f"relevance_step{step}.png",
                                               title=f"relevance, step {step} ({self.config.criterion.name})")
                self.client.log_artifact(self.run_id, str(png), "plots")

        self._guard(f"logging step {step}", log)

    def finish(self, run_dir: Path, report: dict[str, Any], model: nn.Module, input_size: tuple[int, ...]) -> None:
        if self.run_id is None:
            return
        if self._active():
            self._log_results(Path(run_dir), report, model, input_size)
        if self._active():
            self._guard("ending the run", lambda: self.client.set_terminated(self.run_id, "FINISHED"))
        elif self._store_answers():  # something failed to log, but the store is there: do not leave it RUNNING
            with contextlib.suppress(Exception):
                self.client.set_tag(self.run_id, "tracking_lost", _tag_value(self.lost))
                self.client.set_terminated(self.run_id, "FAILED")

    def _log_results(self, run_dir: Path, report: dict[str, Any], model: nn.Module,
                     input_size: tuple[int, ...]) -> None:
        self._guard("logging final metrics", lambda: self._log_final(report))

        def artifacts() -> None:
            for name in ("plan.json", "report.json"):
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
            from singe_dist.tracking.plots import plot_report

            with tempfile.TemporaryDirectory(prefix="singe-mlflow-") as tmp:
                for png in plot_report(report, tmp):
                    self.client.log_artifact(self.run_id, str(png), "plots")

        self._guard("logging artifacts", artifacts)
        if self.config.tracking.log_model and self._active():
            self._guard("logging the model", lambda: self._log_model(model, input_size))
        if self.config.tracking.log_model and self._active():
            self._guard("logging the ONNX model", lambda: self._log_onnx(model, input_size))

    def fail(self, error: BaseException) -> None:
        if self.run_id is None or (self.lost is not None and not self._store_answers()):
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        try:
            self.client.set_tag(self.run_id, "error", _tag_value(message))
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # noqa: BLE001 - never hide the job's own error behind a tracking one
            self._lose(f"marking the run {status}", exc)

    # -------------------------------------------------------------------------------- helpers
    def _active(self) -> bool:
        return self.run_id is not None and self.lost is None

    def _guard(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self._lose(what, exc)

    def _lose(self, what: str, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = f"{what}: {_short(exc)}"
            warnings.warn(f"MLflow tracking lost ({self.shown_uri}, {self.lost}); training continues, the run's "
                          f"files are in {self.run_dir}", RuntimeWarning, stacklevel=3)

    def _store_answers(self) -> bool:
        """After a loss: does the store answer again (quickly)? Local stores always do."""
        if not _is_http(self.uri):
            return True
        try:
            check_reachable(self.uri, self.config.tracking.connect_timeout_s, self.config.tracking.experiment)
        except SingeError:
            return False
        return True

    def _previous_run(self) -> Any:
        """The MLflow run of this run directory, when the job resumes one logged to the same store."""
        path = self.run_dir / RUN_FILE
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if saved.get("uri") != self.shown_uri or not saved.get("run_id"):
            return None
        try:
            run = self.client.get_run(saved["run_id"])
        except Exception:  # noqa: BLE001 - gone from the store: start a new run
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _write_run_file(self) -> None:
        from singe_dist.atomic import atomic_write_text

        try:
            atomic_write_text(self.run_dir / RUN_FILE, json.dumps(
                {"uri": self.shown_uri, "experiment_id": self.experiment_id, "run_id": self.run_id}) + "\n")
        except SingeError:  # a resume then starts a new MLflow run: nothing else depends on this file
            pass

    def _log_final(self, report: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in final_metrics(report).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def _log_model(self, model: nn.Module, input_size: tuple[int, ...]) -> None:
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        import torchvision
        from mlflow.models import infer_signature

        import singe_dist

        model = copy.deepcopy(model).cpu().eval()
        example = np.random.default_rng(0).standard_normal((1, *input_size)).astype(np.float32)
        with torch.no_grad():
            output = model(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        requirements = [*mlflow.pytorch.get_default_pip_requirements(),
                        f"torchvision=={torchvision.__version__.split('+')[0]}"]
        registered = self.config.tracking.register_model
        extra: dict[str, Any] = {}
        if "serialization_format" in inspect.signature(mlflow.pytorch.log_model).parameters:
            # MLflow 3's default "pt2" (torch.export) specialises the batch dimension to the example's 1:
            # the logged model would refuse any other batch size. Pickle keeps the module as it is; the
            # package's code travels with it (code_paths), so it loads without singe-dist installed.
            extra["serialization_format"] = "pickle"
        pickle_filter = _DropPickleWarning()
        logging.getLogger("mlflow.pytorch").addFilter(pickle_filter)
        try:
            with _global_tracking_uri(self.uri):
                logged = self.client.create_logged_model(self.experiment_id, name=MODEL_NAME, source_run_id=self.run_id)
                info = mlflow.pytorch.log_model(
                    model, name=MODEL_NAME, model_id=logged.model_id, run_id=self.run_id, signature=signature,
                    input_example=example, pip_requirements=requirements,
                    code_paths=[str(Path(singe_dist.__file__).parent)], registered_model_name=registered,
                    await_registration_for=60 if registered else 0, **extra)
        finally:
            logging.getLogger("mlflow.pytorch").removeFilter(pickle_filter)
        self.model_uri = info.model_uri
        self.client.set_tag(self.run_id, "model_uri", info.model_uri)

    def _log_onnx(self, model: nn.Module, input_size: tuple[int, ...]) -> None:
        """``model_onnx/model.onnx``: the model exported and checked by :func:`singe_dist.export.export_onnx`.

        A model that does not export (or does not match through ONNX Runtime) costs only this file: a
        warning and the run's ``model_onnx_error`` tag say why; the run and the PyTorch model stand.
        """
        from singe_dist.export import export_onnx

        with tempfile.TemporaryDirectory(prefix="singe-mlflow-") as tmp:
            try:
                result = export_onnx(model, Path(tmp) / "model.onnx", tuple(input_size))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - the export is optional next to the run
                warnings.warn(f"ONNX model not logged: {_short(exc)}", RuntimeWarning, stacklevel=2)
                self.client.set_tag(self.run_id, "model_onnx_error", _tag_value(_short(exc)))
                return
            self.client.log_artifact(self.run_id, str(result.path), "model_onnx")
        self.client.set_tag(self.run_id, "model_onnx", "model_onnx/model.onnx")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = redact(text)
    return text if len(text) <= 300 else text[:297] + "..."


def make_tracker(config: JobConfig, rank: int = 0) -> Tracker:
    """The tracker of one rank: MLflow on rank 0 when tracking is enabled, nothing otherwise.

    Raises :class:`SingeError` when the tracking server does not answer, before the job does any work.
    """
    if rank != 0 or not config.tracking.enabled:
        return NullTracker()
    return MlflowTracker(config)


__all__ = ["MlflowTracker", "check_reachable", "final_metrics", "make_tracker", "redact", "resolve_uri",
           "safe_params", "ui_hint"]
