"""MLflow tracking against a real ``mlflow server`` on 127.0.0.1 (one per module) and the SQLite default.

The last test SIGKILLs a second real server while a real ``singe-dist prune`` process logs to it: the
job must finish, report the loss of tracking once and leak no secret (docs/RELIABILITY.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from singe_dist.checkpoint import load_model
from singe_dist.config import flatten, load_config
from singe_dist.demo import DEMO_CONFIG
from singe_dist.engine.faults import FAIL_ENV
from singe_dist.engine.loop import PruneJob
from singe_dist.engine.run_dir import CHECKPOINT_NAME
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.report import final_metrics
from singe_dist.tracking import NullTracker
from singe_dist.tracking.mlflow_tracker import MlflowTracker, make_tracker
from singe_dist.tracking.plots import accuracy_points, plot_accuracy_vs_macs, plot_channels, plot_relevance_histogram
from singe_dist.tracking.redaction import redact, safe_params
from singe_dist.tracking.store import resolve_uri, ui_hint

from .support import DIGITS_SIZE, prune_argv, small_job_overrides
from .mlflow_server import free_port, start_mlflow_server

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
STEP_KEYS = ("top1", "top5", "loss", "macs", "params", "fraction_removed")  # baseline (step 0) and every step
PRUNE_KEYS = ("pruned_top1", "relevance_s", "finetune_s", "channels_removed", "skipped_samples")  # steps 1..T


def _quiet_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module", autouse=True)
def _server_process(request, tmp_path_factory):  # noqa: ANN001, ANN202
    """Start the server as the module begins (it takes a while): the tests without one run meanwhile."""
    if not any("mlflow_server" in item.fixturenames for item in request.session.items if item.module is request.module):
        yield None
        return
    root = tmp_path_factory.mktemp("mlflow-server")
    proc, port = start_mlflow_server(root, _quiet_env())
    try:
        yield proc, f"http://127.0.0.1:{port}", root / "server.log"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its uvicorn worker too)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)


@pytest.fixture(scope="module")
def mlflow_server(_server_process) -> str:  # noqa: ANN001
    """A real tracking server (SQLite backend, proxied artifacts) on a free port of 127.0.0.1, once it answers."""
    import requests

    proc, uri, log = _server_process
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return uri
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not answer /health within 240 s: {log.read_text()[-2000:]}")
        time.sleep(0.5)


@pytest.fixture()
def uri_env(monkeypatch, mlflow_server) -> str:  # noqa: ANN001
    """The server as ``MLFLOW_TRACKING_URI`` (what ``mlflow.pytorch.load_model("models:/...")`` resolves with)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def _config(shards: dict[str, str], out_dir: Path, *extra: str):  # noqa: ANN202
    """The small job from an untrained model, tracked, with a fine-tune loss logged every 2 iterations."""
    overrides = small_job_overrides(
        shards, None, out_dir, data__shuffle_buffer=64, finetune__iters_per_step=4, finetune__final_iters=3,
        finetune__log_every=2, run__latency_batch_sizes="[1]", tracking__enabled="true",
        tracking__experiment="test-tracking")
    return load_config(DEMO_CONFIG, [*overrides, *extra])


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str) -> set[str]:
    found, todo = set(), [None]
    while todo:
        for item in client.list_artifacts(run_id, todo.pop()):
            (todo.append(item.path) if item.is_dir else found.add(item.path))
    return found


# ------------------------------------------------------------------------------------ no server
def test_an_unreachable_server_fails_fast_with_one_line_naming_it(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()  # nothing listens there
    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    config = load_config(None, [f"run.out_dir={tmp_path / 'run'}", f"tracking.uri={uri}",
                                "tracking.connect_timeout_s=5"])
    started = time.monotonic()
    with pytest.raises(SingeError) as err:
        make_tracker(config)
    assert time.monotonic() - started < 15
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and "not reachable" in message
    assert "\n" not in message and "s3cret" not in message
    assert not (tmp_path / "run").exists()  # nothing was done


def test_a_server_that_never_answers_fails_within_the_connect_timeout(tmp_path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = load_config(None, [f"run.out_dir={tmp_path / 'run'}", f"tracking.uri={uri}",
                                    "tracking.connect_timeout_s=1.5"])
        started = time.monotonic()
        with pytest.raises(SingeError, match=r"did not answer within 1\.5 s") as err:
            make_tracker(config)
        assert time.monotonic() - started < 10
    assert uri in str(err.value)


def test_the_sqlite_default_needs_no_server_and_logs_no_secrets(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config(None, [
        "run.out_dir=runs/job",  # relative: the store goes beside it, as an absolute path
        "data.train=https://bob:hunter2@data.example.com/train-{000000..000001}.tar",
        "model.checkpoint=https://store.example.com/base.pt?X-Amz-Signature=abcdef123&token=zzz999",
        "model.ignored_layers=[fc]",
    ])
    db = tmp_path / "runs" / "mlflow.db"
    assert resolve_uri(config) == f"sqlite:///{db}"
    assert ui_hint(config) == f"mlflow ui --backend-store-uri sqlite:///{db}"
    tracker = make_tracker(config)
    assert isinstance(tracker, MlflowTracker) and db.is_file()
    tracker.start({**flatten(config), "storage.api_token": "tok-SECRET-1"}, {"criterion": "singe"})
    tracker.log_metrics({"top1": 0.5, "macs": 100, "ignored": "text", "nan": float("nan")}, step=0)
    tracker.log_metrics({"top1": 0.7, "macs": 50}, step=1)
    tracker.log_step({"step": 1}, {"layer1": [0.5, -0.1, 0.2], "layer2": [0.0]})
    tracker.fail(RuntimeError("boom"))
    assert tracker.lost is None

    client = MlflowClient(f"sqlite:///{db}")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"
    everything = json.dumps({**run.data.params, **run.data.tags})
    for secret in ("hunter2", "abcdef123", "zzz999", "tok-SECRET-1"):
        assert secret not in everything
    assert "storage.api_token" not in run.data.params
    assert run.data.params["data.train"].startswith("https://bob:<redacted>@data.example.com/")
    assert run.data.params["model.ignored_layers"] == '["fc"]'
    assert [s for s, _ in _history(client, tracker.run_id, "top1")] == [0, 1]
    assert set(run.data.metrics) == {"top1", "macs"}
    assert "plots/relevance_step1.png" in _artifacts(client, tracker.run_id)
    assert (tmp_path / "runs" / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def _assert_onnx_matches(run_id: str, uri: str, expected: torch.nn.Module, x: torch.Tensor, dst: Path) -> None:
    import onnxruntime as ort

    onnx_file = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model_onnx/model.onnx",
                                                    dst_path=str(dst), tracking_uri=uri)
    session = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = expected.eval()(x).numpy()
    assert abs(got - want).max() <= 1e-4 * abs(want).max()


def test_the_onnx_model_is_logged_beside_the_pytorch_one_and_a_failed_export_never_loses_the_run(
        monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """SQLite store; the PyTorch model's own logging is the slow server test's (stubbed out here)."""
    import singe_dist.export

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(MlflowTracker, "_log_model", lambda self, model, input_size: None)
    model = build_model("digits_resnet", 10).eval()
    x = torch.randn(5, 3, DIGITS_SIZE, DIGITS_SIZE)
    runs = []
    for name in ("ok", "broken"):
        if name == "broken":
            def refuse(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
                raise SingeError("ONNX Runtime differs from PyTorch at batch 1")

            monkeypatch.setattr(singe_dist.export, "export_onnx", refuse)
        config = load_config(None, [f"run.out_dir={tmp_path / 'runs' / name}", "tracking.experiment=test-onnx"])
        tracker = make_tracker(config)
        tracker.start(flatten(config), {})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tracker.finish(tmp_path / "runs" / name, {"steps": []}, model, (3, DIGITS_SIZE, DIGITS_SIZE))
        assert tracker.lost is None
        runs.append((tracker.run_id, [str(w.message) for w in caught]))
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    (ok, ok_warnings), (broken, broken_warnings) = runs
    assert "model_onnx/model.onnx" in _artifacts(client, ok) and not ok_warnings
    assert client.get_run(ok).data.tags["model_onnx"] == "model_onnx/model.onnx"
    _assert_onnx_matches(ok, uri, model, x, tmp_path / "dl")
    run = client.get_run(broken)
    assert run.info.status == "FINISHED" and "model_onnx" not in run.data.tags
    assert "differs from PyTorch" in run.data.tags["model_onnx_error"]
    assert not any(p.startswith("model_onnx") for p in _artifacts(client, broken))
    assert [m for m in broken_warnings if "ONNX model not logged" in m] == broken_warnings and broken_warnings


def test_only_rank_zero_with_tracking_enabled_gets_a_real_tracker(tmp_path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"  # never contacted
    config = load_config(None, [f"run.out_dir={tmp_path}", f"tracking.uri={unreachable}"])
    assert isinstance(make_tracker(config, rank=1), NullTracker)
    config = load_config(None, [f"run.out_dir={tmp_path}", f"tracking.uri={unreachable}", "tracking.enabled=false"])
    assert isinstance(make_tracker(config, rank=0), NullTracker)
    assert ui_hint(config) == f"open {unreachable}"


def test_redaction_and_param_values() -> None:
    assert redact("postgresql://u:pw@db:5432/mlflow") == "postgresql://u:<redacted>@db:5432/mlflow"
    assert redact("s3://b/k?token=abc&x=1") == "s3://b/k?token=<redacted>&x=1"
    assert "ghp_" not in redact("use ghp_abcdefghijklmnopqrstuvwxyz0123")
    assert redact("runs/demo/prune") == "runs/demo/prune"
    params = safe_params({"a.list": [1, 8], "a.none": None, "a.long": "x" * 7000, "db.password": "pw",
                          "a.float": 0.5})
    assert params == {"a.list": "[1, 8]", "a.none": "None", "a.long": "x" * 5997 + "...", "a.float": "0.5"}


def test_plots_and_final_metrics_from_a_report(tmp_path) -> None:
    report = {
        "baseline": {"top1": 0.9, "top5": 1.0, "macs": 3e6, "params": 8e4},
        "steps": [{"step": 1, "macs": 2e6, "pruned": {"top1": 0.5}, "finetuned": {"top1": 0.85}},
                  {"step": 2, "macs": 1.5e6, "finetuned": {"top1": 0.8}}],
        "final": {"top1": 0.88, "top5": 0.99, "macs": 1.5e6, "params": 4e4, "loss": 0.4, "fraction_removed": 0.5},
        "channels": {"conv1": {"before": 16, "after": 8}, "layers.0": {"before": 32, "after": 20}},
        "latency": {"final": {"cpu_b1_ms": 1.5}}, "wall_time_s": {"total": 12.0},
    }
    assert [p[0] for p in accuracy_points(report)] == ["baseline", "step 1 pruned", "step 1 finetuned",
                                                       "step 2 finetuned", "final"]
    for path in (plot_accuracy_vs_macs(report, tmp_path / "a.png"), plot_channels(report["channels"], tmp_path / "c.png"),
                 plot_relevance_histogram({"g": [0.1, -0.3, 0.2], "h": []}, tmp_path / "sub" / "r.png"),
                 plot_accuracy_vs_macs({}, tmp_path / "empty.png")):
        assert path.read_bytes()[:8] == PNG
    metrics = final_metrics(report)
    assert metrics["final_top1"] == 0.88 and metrics["top1_drop"] == pytest.approx(0.02)
    assert metrics["latency_final_cpu_b1_ms"] == 1.5 and metrics["wall_time_total_s"] == 12.0


# ------------------------------------------------------------------------------------ real server
@pytest.mark.slow
@contextlib.contextmanager
def _imports_restored() -> Iterator[None]:
    """Undo what loading a logged model does to this process's imports.

    ``mlflow.pytorch.load_model`` puts the model's ``code`` folder (our package, copied beside the
    model) first on ``sys.path`` and imports ``singe_dist`` from it. Left so, later tests in this
    process, and the processes they spawn (which inherit ``sys.path``), ran the copy and looked for
    its config files beside it.
    """
    path = list(sys.path)
    ours = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "singe_dist"}
    try:
        yield
    finally:
        sys.path[:] = path
        for name in [n for n in sys.modules if n.split(".")[0] == "singe_dist" and n not in ours]:
            del sys.modules[name]
        sys.modules.update(ours)


def test_a_run_logs_params_step_metrics_artifacts_and_a_model_that_loads(digits_shards, uri_env, tmp_path) -> None:
    run_dir = tmp_path / "runs" / "singe"
    config = _config(digits_shards, run_dir, "tracking.register_model=singe-digits-test")
    tracker = make_tracker(config)
    assert isinstance(tracker, MlflowTracker) and tracker.uri == uri_env
    report = PruneJob(config, tracker=tracker, log=lambda _m: None).run()
    assert tracker.lost is None

    client = MlflowClient(uri_env)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == tracker.experiment_id
    assert client.get_experiment(run.info.experiment_id).name == "test-tracking"

    # params: the flattened config, as strings (lists stringified)
    params = run.data.params
    assert params == safe_params(flatten(config)) and set(params) == set(flatten(config))
    assert params["prune.steps"] == "2" and params["criterion.name"] == "singe"
    assert params["run.latency_batch_sizes"] == "[1]" and params["model.checkpoint"] == "None"
    tags = run.data.tags
    assert tags["model"] == "digits_resnet" and tags["criterion"] == "singe" and tags["run_dir"] == str(run_dir)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()

    # metrics: exactly one value per step, the report's values
    for key in STEP_KEYS:
        assert [s for s, _ in _history(client, tracker.run_id, key)] == [0, 1, 2], key
    for key in PRUNE_KEYS:
        assert [s for s, _ in _history(client, tracker.run_id, key)] == [1, 2], key
    top1 = dict(_history(client, tracker.run_id, "top1"))
    assert top1[0] == pytest.approx(report["baseline"]["top1"])
    assert [top1[r["step"]] for r in report["steps"]] == pytest.approx([r["finetuned"]["top1"] for r in report["steps"]])
    assert dict(_history(client, tracker.run_id, "macs"))[2] == report["steps"][1]["macs"]
    # the fine-tune loss every 2 iterations of 4 + 4 + 3, its step the global iteration
    assert [s for s, _ in _history(client, tracker.run_id, "finetune_loss")] == [2, 4, 6, 8, 10]
    assert run.data.metrics["final_top1"] == pytest.approx(report["final"]["top1"])
    assert run.data.metrics["final_macs"] == report["final"]["macs"]

    # artifacts: plan, report, plots
    files = _artifacts(client, tracker.run_id)
    assert {"plan.json", "report.json", "plots/accuracy_vs_macs.png", "plots/channels_per_layer.png",
            "plots/relevance_step1.png", "plots/relevance_step2.png"} <= files
    got = Path(mlflow.artifacts.download_artifacts(run_id=tracker.run_id, artifact_path="report.json",
                                                   dst_path=str(tmp_path / "dl"), tracking_uri=uri_env))
    assert json.loads(got.read_text()) == json.loads((run_dir / "report.json").read_text())
    png = Path(mlflow.artifacts.download_artifacts(run_id=tracker.run_id, artifact_path="plots/channels_per_layer.png",
                                                   dst_path=str(tmp_path / "dl"), tracking_uri=uri_env))
    assert png.read_bytes()[:8] == PNG

    # the model: linked to the run, registered, with a signature, and the same function as pruned.pt
    assert tracker.model_uri and tags["model_uri"] == tracker.model_uri
    model_id = tracker.model_uri.split("/")[-1]
    assert client.get_logged_model(model_id).source_run_id == tracker.run_id
    versions = client.search_model_versions("name='singe-digits-test'")
    assert [v.run_id for v in versions] == [tracker.run_id]
    info = mlflow.models.get_model_info(tracker.model_uri)
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, DIGITS_SIZE, DIGITS_SIZE]
    with _imports_restored():
        logged = mlflow.pytorch.load_model(tracker.model_uri).eval()
    expected = load_model(run_dir / "pruned.pt")[0].eval()
    x = torch.randn(8, 3, DIGITS_SIZE, DIGITS_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(logged(x), expected(x), atol=1e-6)
    # beside it, the same model as ONNX (checked through ONNX Runtime before it was logged)
    assert "model_onnx/model.onnx" in files
    _assert_onnx_matches(tracker.run_id, uri_env, expected, x, tmp_path / "dl-onnx")


@pytest.mark.slow
def test_a_failed_run_is_marked_failed_keeps_its_metrics_and_a_resume_continues_it(
        digits_shards, uri_env, tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "runs" / "crash"
    config = _config(digits_shards, run_dir, "tracking.log_model=false", "criterion.name=taylor")
    tracker = make_tracker(config)
    monkeypatch.setenv(FAIL_ENV, "1")
    with pytest.raises(RuntimeError, match="fault injection"):
        PruneJob(config, tracker=tracker, log=lambda _m: None).run()

    client = MlflowClient(uri_env)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert "fault injection" in run.data.tags["error"] and "\n" not in run.data.tags["error"]
    for key in STEP_KEYS:
        assert [s for s, _ in _history(client, tracker.run_id, key)] == [0, 1], key
    assert [s for s, _ in _history(client, tracker.run_id, "pruned_top1")] == [1]
    files = _artifacts(client, tracker.run_id)
    assert "plots/relevance_step1.png" in files and "report.json" not in files

    # --resume: the same MLflow run goes on, and still has one value per step
    monkeypatch.delenv(FAIL_ENV)
    resumed = make_tracker(config)
    PruneJob(config, tracker=resumed, resume=True, log=lambda _m: None).run()
    assert resumed.run_id == tracker.run_id and resumed.lost is None
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and "error" not in run.data.tags
    assert "fault injection" in run.data.tags["resumed_after"] and run.data.tags["resumes"] == "1"
    for key in STEP_KEYS:
        assert [s for s, _ in _history(client, tracker.run_id, key)] == [0, 1, 2], key
    assert {"report.json", "plan.json", "plots/relevance_step2.png"} <= _artifacts(client, tracker.run_id)


@pytest.mark.slow
def test_losing_the_server_mid_run_warns_once_and_never_raises(uri_env, tmp_path) -> None:
    config = load_config(None, [f"run.out_dir={tmp_path / 'run'}", "tracking.experiment=test-tracking"])
    tracker = make_tracker(config)
    tracker.start(flatten(config), {})
    tracker.log_metrics({"top1": 0.5}, step=0)

    def gone(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise ConnectionError("Connection refused")

    tracker.client.log_batch = gone
    tracker.client.log_artifact = gone
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_metrics({"top1": 0.6}, step=1)
        tracker.log_step({"step": 1}, {"g": [0.1, 0.2]})
        tracker.finish(tmp_path / "run", {"steps": []}, build_model("digits_resnet", 10), (3, 16, 16))
    lost = [w for w in caught if "MLflow tracking lost" in str(w.message)]
    assert len(lost) == 1 and str(tmp_path / "run") in str(lost[0].message)
    assert "training continues" in str(lost[0].message)
    assert tracker.lost is not None and "Connection refused" in tracker.lost
    # the server itself is fine: the run is not left RUNNING
    run = MlflowClient(uri_env).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and "Connection refused" in run.data.tags["tracking_lost"]
    assert [s for s, _ in _history(MlflowClient(uri_env), tracker.run_id, "top1")] == [0]


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
    argv = prune_argv(digits_shards, digits_baseline, run_dir, prune__steps=3, tracking__enabled="true",
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
