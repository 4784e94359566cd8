"""MLflow tracking (design notes, section 7): one MLflow run per job, logged from rank 0 only.

* params: the flattened config (``section.key``), secrets redacted (:mod:`~singe_dist.tracking.redaction`);
* tags: model, criterion, git commit, Ray job id, the run directory (:mod:`~singe_dist.tracking.provenance`);
* metrics: baseline at step 0, one value per pruning step t = 1..T, ``finetune_loss`` every
  ``finetune.log_every`` iterations (its step is the global fine-tune iteration), ``final_*`` at the end;
* artifacts: plan.json, report.json, PNG plots, and the pruned model (signature + input example),
  optionally registered, beside it ``model_onnx/model.onnx`` (:mod:`~singe_dist.tracking.model_logging`).

Where the runs go is :mod:`~singe_dist.tracking.store`; whether the store answers, checked before the
job does any work, is :mod:`~singe_dist.tracking.connect`. A server lost mid-run never stops training:
the tracker warns once, stops logging and records why in :attr:`MlflowTracker.lost` (the loop copies
it into report.json as ``tracking_lost``). A resumed job continues the same MLflow run (:data:`RUN_FILE`).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from singe_dist.config import JobConfig
from singe_dist.errors import SingeError
from singe_dist.report import final_metrics, is_number
from singe_dist.tracking.base import NullTracker, Tracker
from singe_dist.tracking.connect import call_with_deadline, check_reachable, open_client
from singe_dist.tracking.model_logging import log_onnx_model, log_pytorch_model
from singe_dist.tracking.provenance import run_tags
from singe_dist.tracking.redaction import redact, safe_params, short_error, tag_value
from singe_dist.tracking.store import is_http, is_local, resolve_uri, sqlite_path

RUN_FILE = "mlflow_run.json"  # in the run directory: a resumed job continues the same MLflow run


class MlflowTracker:
    """The :class:`~singe_dist.tracking.base.Tracker` that logs a job to MLflow (rank 0 only).

    The constructor resolves the URI, checks the server answers (a :class:`SingeError` otherwise) and
    finds or creates the experiment, so that a tracking problem stops the job before any work.
    """

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self.uri = resolve_uri(config)
        self.shown_uri = redact(self.uri)
        self.run_dir = Path(config.run.out_dir).expanduser().absolute()
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_uri: str | None = None  # the logged model (``models:/...``), after finish
        self.lost: str | None = None  # why tracking stopped mid-run, if it did
        timeout = config.tracking.connect_timeout_s
        self.client = open_client(self.uri, timeout, config.tracking.experiment)
        self.experiment_id = call_with_deadline(self._experiment, self.shown_uri,
                                                None if is_local(self.uri) else timeout + 5)

    # -------------------------------------------------------------------------------- set-up
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
        sqlite = sqlite_path(self.uri)
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
        all_tags = run_tags(self.config, tags, self.run_dir)
        resumed = self._previous_run()
        try:
            known = self._resume_or_create(resumed, all_tags)
            self._log_params_and_tags({k: v for k, v in safe_params(params).items() if k not in known}, all_tags)
        except SingeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the job has not started work yet: stop it with one line
            raise SingeError(f"MLflow tracking store {self.shown_uri}: cannot start the run: {short_error(exc)}") from None

    def _resume_or_create(self, resumed: Any, all_tags: dict[str, str]) -> dict[str, str]:
        """Set :attr:`run_id` to the ``resumed`` run (an MLflow ``Run``) or a new one; the params it already has.

        A resumed run says so in ``all_tags`` (``resumes``, and ``resumed_after`` the error that stopped
        it), since MLflow keeps one status per run and the failure would otherwise vanish.
        """
        if resumed is not None:
            self.run_id = resumed.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            previous_error = resumed.data.tags.get("error")
            if previous_error is not None:
                all_tags["resumed_after"] = previous_error
                self.client.delete_tag(self.run_id, "error")
            all_tags["resumes"] = str(int(resumed.data.tags.get("resumes", "0")) + 1)
            return resumed.data.params
        cfg = self.config
        name = cfg.tracking.run_name or f"{cfg.criterion.name}-{cfg.model.arch}-{self.run_dir.name}"
        self.run_id = self.client.create_run(self.experiment_id, run_name=name).info.run_id
        self._write_run_file()
        return {}

    def _log_params_and_tags(self, params: dict[str, str], tags: dict[str, str]) -> None:
        """In batches of 100: MLflow refuses a batch of more params (or tags) than that."""
        from mlflow.entities import Param, RunTag

        items = [Param(k, v) for k, v in params.items()]
        tag_items = [RunTag(k, tag_value(v)) for k, v in tags.items()]
        for i in range(0, max(len(items), len(tag_items)), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100], tags=tag_items[i:i + 100])

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
                self.client.set_tag(self.run_id, "tracking_lost", tag_value(self.lost))
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
            self.client.set_tag(self.run_id, "error", tag_value(message))
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:  # noqa: BLE001 - never hide the job's own error behind a tracking one
            self._lose(f"marking the run {status}", exc)

    # -------------------------------------------------------------------------------- helpers
    def _active(self) -> bool:
        return self.run_id is not None and self.lost is None

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never stop training
            self._lose(what, exc)

    def _lose(self, what: str, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = f"{what}: {short_error(exc)}"
            warnings.warn(f"MLflow tracking lost ({self.shown_uri}, {self.lost}); training continues, the run's "
                          f"files are in {self.run_dir}", RuntimeWarning, stacklevel=3)

    def _store_answers(self) -> bool:
        """After a loss: does the store answer again (quickly)? Local stores always do."""
        if not is_http(self.uri):
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
        self.model_uri = log_pytorch_model(
            self.client, uri=self.uri, experiment_id=self.experiment_id, run_id=self.run_id, model=model,
            input_size=input_size, registered=self.config.tracking.register_model)
        self.client.set_tag(self.run_id, "model_uri", self.model_uri)

    def _log_onnx(self, model: nn.Module, input_size: tuple[int, ...]) -> None:
        log_onnx_model(self.client, self.run_id, model, input_size)


def make_tracker(config: JobConfig, rank: int = 0) -> Tracker:
    """The tracker of one rank: MLflow on rank 0 when tracking is enabled, nothing otherwise.

    Raises :class:`SingeError` when the tracking server does not answer, before the job does any work.
    """
    if rank != 0 or not config.tracking.enabled:
        return NullTracker()
    return MlflowTracker(config)


__all__ = ["RUN_FILE", "MlflowTracker", "make_tracker"]
