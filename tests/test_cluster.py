"""Cluster configs and the local-head scripts.

(a) cluster/ray-cluster.yaml through Ray's own launcher validation (offline: no cloud is asked);
(b) the KubeRay manifests through cluster/validate.py (explicit KubeRay v1 rules + Ray's own
    reading of the cluster spec and of runtimeEnvYAML), and the files they reference;
(c) cluster/start_local_head.sh / stop_local_head.sh for real: a head on 127.0.0.1 with token
    authentication, a job submitted with the token, clients without it refused, then stopped.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.ray_head import REPO_ROOT, START_SCRIPT, STOP_SCRIPT, is_loopback, local_ray_head, ray_executable

_spec = importlib.util.spec_from_file_location("cluster_validate", REPO_ROOT / "cluster" / "validate.py")
validate = importlib.util.module_from_spec(_spec)
sys.modules["cluster_validate"] = validate
_spec.loader.exec_module(validate)


def load(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture()
def launcher() -> dict:
    return load(validate.LAUNCHER_CONFIG)


@pytest.fixture()
def raycluster() -> dict:
    return load(validate.RAYCLUSTER)


@pytest.fixture()
def rayjob() -> dict:
    return load(validate.RAYJOB)


# --- (a) Ray cluster launcher --------------------------------------------------------------------

def test_launcher_config_passes_rays_validation(launcher):
    prepared = validate.validate_launcher_config(launcher)
    gpu = prepared["available_node_types"]["ray.worker.gpu"]
    assert gpu["resources"]["GPU"] > 0 and gpu["min_workers"] <= gpu["max_workers"] <= prepared["max_workers"]
    # Our keys replaced the provider defaults (no nightly-wheel setup command from Ray's defaults).
    assert prepared["setup_commands"] == launcher["setup_commands"]
    assert prepared["head_start_ray_commands"] == launcher["head_start_ray_commands"]


def test_rays_launcher_schema_is_really_applied(launcher):
    typo = copy.deepcopy(launcher)
    typo["max_worker"] = typo.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        validate.validate_launcher_config(typo)
    bad_type = copy.deepcopy(launcher)
    bad_type["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = "4"
    with pytest.raises(jsonschema.ValidationError):
        validate.validate_launcher_config(bad_type)


def _gpu_type(c):
    return c["available_node_types"]["ray.worker.gpu"]


LAUNCHER_MISTAKES = {
    "image of another Ray": lambda c: c["docker"].update(worker_image="rayproject/ray:2.59.0-py311-gpu"),
    "CPU image on GPU workers": lambda c: c["docker"].update(worker_image="rayproject/ray:2.60.0-py311"),
    "no GPU worker type": lambda c: _gpu_type(c)["resources"].pop("GPU"),
    "dashboard on all interfaces": lambda c: c.update(head_start_ray_commands=[
        x.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0") for x in c["head_start_ray_commands"]]),
    "token not mounted": lambda c: c["file_mounts"].pop("~/.ray/auth_token"),
    "no token mode": lambda c: (c["docker"].update(run_options=[]), c.update(worker_start_ray_commands=[
        x.replace("RAY_AUTH_MODE=token ", "") for x in c["worker_start_ray_commands"]])),
    "project not installed": lambda c: c.update(setup_commands=["echo nothing"]),
    "min above max": lambda c: _gpu_type(c).update(min_workers=2, max_workers=1),
    "more workers than the cluster allows": lambda c: _gpu_type(c).update(max_workers=8),
}


@pytest.mark.parametrize("mistake", LAUNCHER_MISTAKES)
def test_launcher_project_rules_catch_mistakes(launcher, mistake):
    LAUNCHER_MISTAKES[mistake](launcher)
    with pytest.raises(validate.ConfigProblems):
        validate.validate_launcher_config(launcher)


# --- (b) KubeRay ---------------------------------------------------------------------------------

def test_raycluster_manifest_is_valid(raycluster):
    assert validate.raycluster_problems(raycluster) == []


def test_rayjob_manifest_is_valid(rayjob):
    assert validate.rayjob_problems(rayjob, check_files=False) == []
    spec = rayjob["spec"]
    assert spec["entrypoint"] == (f"python {validate.CODE_DIR}/jobs/prune.py "
                                  f"--config {validate.CODE_DIR}/jobs/configs/resnet50_imagenet.yaml")
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] in validate.SUBMISSION_MODES


def test_rayjob_entrypoint_files_exist_in_the_repository(rayjob):
    assert validate.entrypoint_files(rayjob["spec"]["entrypoint"]) == ["jobs/prune.py", "jobs/configs/resnet50_imagenet.yaml"]
    assert (REPO_ROOT / "jobs/prune.py").is_file()
    assert (REPO_ROOT / "jobs/configs/resnet50_imagenet.yaml").is_file()


def test_rayjob_cluster_is_the_raycluster(raycluster, rayjob):
    assert rayjob["spec"]["rayClusterSpec"] == raycluster["spec"], "keep rayjob.yaml's rayClusterSpec = raycluster.yaml's spec"


def test_ray_reads_the_gpu_workers_from_the_manifest(raycluster):
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    raycluster["metadata"]["namespace"] = "default"
    derived = _derive_autoscaling_config_from_ray_cr(raycluster)
    group = raycluster["spec"]["workerGroupSpecs"][0]
    node_type = derived["available_node_types"][group["groupName"]]
    assert node_type["resources"]["GPU"] == int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert (node_type["min_workers"], node_type["max_workers"]) == (group["minReplicas"], group["maxReplicas"])


def test_rayjob_runs_the_image_of_the_dockerfile_with_the_lock_and_jobs_runtime_env(rayjob, raycluster):
    """The code and the dependencies come from cluster/Dockerfile's image, nothing from a URL."""
    env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert "working_dir" not in env and "uv" not in env and "pip" not in env, "code and dependencies are the image's"
    dockerfile = (REPO_ROOT / "cluster" / "Dockerfile").read_text()
    assert validate.dockerfile_problems(dockerfile) == []
    assert "--no-emit-package ray" in dockerfile  # every uv.lock pin but Ray's, which is the base image's
    images = {c["image"] for doc in (rayjob["spec"]["rayClusterSpec"], raycluster["spec"])
              for group in (doc["headGroupSpec"], *doc["workerGroupSpecs"]) for c in group["template"]["spec"]["containers"]}
    assert images == {f"singe-dist:{validate.ray_version()}-py311-gpu"}, images
    runtime_env = REPO_ROOT / "jobs" / "runtime_env.yaml"
    if runtime_env.is_file():
        wanted = (load(runtime_env) or {}).get("env_vars", {})
        assert {k: env["env_vars"].get(k) for k in wanted} == wanted, "env_vars of jobs/runtime_env.yaml"


DOCKERFILE_MISTAKES = {
    "base of another Ray": lambda t: t.replace("rayproject/ray:2.60.0-py311-gpu", "rayproject/ray:2.59.0-py311-gpu"),
    "CPU base image": lambda t: t.replace("2.60.0-py311-gpu", "2.60.0-py311"),
    "dependencies not from the lock": lambda t: t.replace("uv export --frozen", "uv export"),
    "code not copied": lambda t: t.replace("COPY --chown=ray:users singe_dist ./singe_dist", ""),
    "code elsewhere": lambda t: t.replace("WORKDIR /home/ray/singe-dist", "WORKDIR /app"),
    "not on PYTHONPATH": lambda t: t.replace("PYTHONPATH=/home/ray/singe-dist", "PYTHONPATH=/tmp"),
}


@pytest.mark.parametrize("mistake", DOCKERFILE_MISTAKES)
def test_dockerfile_rules_catch_mistakes(mistake):
    text = (REPO_ROOT / "cluster" / "Dockerfile").read_text()
    broken = DOCKERFILE_MISTAKES[mistake](text)
    assert broken != text and validate.dockerfile_problems(broken) != []


def _worker(doc):
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    return spec["workerGroupSpecs"][0]


def _worker_container(doc):
    return _worker(doc)["template"]["spec"]["containers"][0]


def _head_container(doc):
    return doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


KUBERAY_MISTAKES = {
    "replicas above maxReplicas": lambda d: _worker(d).update(replicas=9),
    "minReplicas above replicas": lambda d: _worker(d).update(minReplicas=3),
    "zero GPUs": lambda d: _worker_container(d)["resources"].update(limits={"cpu": "4", "nvidia.com/gpu": "0"}, requests={}),
    "fractional GPUs": lambda d: _worker_container(d)["resources"].update(limits={"cpu": "4", "nvidia.com/gpu": "1.5"}, requests={}),
    "GPU request differs from limit": lambda d: _worker_container(d)["resources"]["requests"].update({"nvidia.com/gpu": "2"}),
    "malformed quantity": lambda d: _worker_container(d)["resources"]["limits"].update(memory="170 GB"),
    "image of another Ray": lambda d: _worker_container(d).update(image="rayproject/ray:2.59.0-py311-gpu"),
    "untagged image": lambda d: _worker_container(d).update(image="rayproject/ray"),
    "no groupName": lambda d: _worker(d).pop("groupName"),
    "rayStartParams not strings": lambda d: _worker(d).update(rayStartParams={"num-gpus": 4}),
    "num-gpus differs from the limit": lambda d: _worker(d).update(rayStartParams={"num-gpus": "2"}),
    "misspelled field": lambda d: _worker(d).update(maxReplica=4),
    "no token auth": lambda d: (d["spec"] if d["kind"] == "RayCluster" else d["spec"]["rayClusterSpec"]).pop("authOptions"),
    "missing volume": lambda d: _worker_container(d)["volumeMounts"].append({"name": "nope", "mountPath": "/x"}),
    "bad name": lambda d: d["metadata"].update(name="Singe_Dist"),
}
RAYJOB_MISTAKES = {
    "bad submissionMode": lambda d: d["spec"].update(submissionMode="Http"),
    "shutdown with a selected cluster": lambda d: d["spec"].update(clusterSelector={"ray.io/cluster": "x"}),
    "local working_dir": lambda d: d["spec"].update(runtimeEnvYAML="working_dir: .\n"),
    "runtime_env typo": lambda d: d["spec"].update(runtimeEnvYAML="env_var:\n  A: b\n"),
    "runtime_env pip and uv": lambda d: d["spec"].update(runtimeEnvYAML="pip: [a]\nuv: [b]\n"),
    "no entrypoint": lambda d: d["spec"].pop("entrypoint"),
    "negative ttl": lambda d: d["spec"].update(ttlSecondsAfterFinished=-1),
    "code neither in the image nor a working_dir": lambda d: _head_container(d).update(image="rayproject/ray:2.60.0-py311"),
    "repository-relative entrypoint without a working_dir": lambda d: d["spec"].update(
        entrypoint="python jobs/prune.py --config jobs/configs/resnet50_imagenet.yaml"),
}


@pytest.mark.parametrize("mistake", KUBERAY_MISTAKES)
def test_kuberay_rules_catch_mistakes_in_the_raycluster(raycluster, mistake):
    KUBERAY_MISTAKES[mistake](raycluster)
    assert validate.raycluster_problems(raycluster) != []


@pytest.mark.parametrize("mistake", [*KUBERAY_MISTAKES, *RAYJOB_MISTAKES])
def test_kuberay_rules_catch_mistakes_in_the_rayjob(rayjob, mistake):
    {**KUBERAY_MISTAKES, **RAYJOB_MISTAKES}[mistake](rayjob)
    assert validate.rayjob_problems(rayjob, check_files=False) != []


def test_rayjob_missing_files_are_reported(rayjob, tmp_path):
    problems = validate.rayjob_problems(rayjob, repo_root=tmp_path)
    assert any("jobs/prune.py is not a file" in p for p in problems)


# --- (c) the local head scripts -------------------------------------------------------------------

def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, check=False)


def test_head_scripts_reject_bad_arguments_before_starting_anything(tmp_path):
    result = _run(str(START_SCRIPT), "--port", "abc")
    assert result.returncode == 1 and "--port must be a port" in result.stdout
    result = _run(str(START_SCRIPT), "--bogus")
    assert result.returncode == 1 and "unknown argument '--bogus'" in result.stdout
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        state = Path("/tmp") / f"sray-busy-{port}"
        try:
            result = _run(str(START_SCRIPT), "--port", str(port), "--state-dir", str(state))
        finally:
            subprocess.run(["rm", "-rf", str(state)], check=False)
    assert result.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in result.stdout
    result = _run(str(STOP_SCRIPT), "--state-dir", str(tmp_path / "none"))
    assert result.returncode == 0 and "nothing to stop" in result.stdout


def _http_status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_local_head_token_auth_loopback_only_and_stop(tmp_path):
    with local_ray_head(num_cpus=2) as head:
        assert head.dashboard_url == f"http://127.0.0.1:{head.ports['dashboard_port']}"
        assert head.address == f"127.0.0.1:{head.ports['port']}"
        assert head.env["RAY_AUTH_MODE"] == "token" and head.token_path.stat().st_mode & 0o077 == 0
        assert head.state_dir.stat().st_mode & 0o077 == 0  # Ray's own temp dir below it is mode 777

        # The job server: 401 without a token, 403 with a wrong one, 200 with the head's.
        jobs_api = f"{head.dashboard_url}/api/jobs/"
        assert _http_status(jobs_api, None) == 401
        assert _http_status(jobs_api, "not-the-token") == 403
        assert _http_status(jobs_api, head.token) == 200

        # Three real clients at once (the ray CLI takes seconds to import): a job submitted with
        # the token; the same submission without it; the GCS asked without it.
        no_token_env = head.client_env(HOME=str(tmp_path))  # no ~/.ray/auth_token to fall back on
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
            no_token_env.pop(key)
        ray = ray_executable()
        clients = {
            # `python` of a job must be the Python of the head's Ray (the project's environment).
            "with token": subprocess.Popen(
                [ray, "job", "submit", "--address", head.dashboard_url, "--",
                 "python", "-c", "import sys; print('ok'); print('prefix', sys.prefix)"],
                env=head.client_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            "job without token": subprocess.Popen(
                [ray, "job", "submit", "--address", head.dashboard_url, "--", "python", "-c", "print('ok')"],
                env=no_token_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            "GCS without token": subprocess.Popen(
                [ray, "status", "--address", head.address],
                env=no_token_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        }
        out = {name: (p.communicate(timeout=240)[0], p.returncode) for name, p in clients.items()}
        text, rc = out["with token"]
        assert rc == 0 and "ok" in text.splitlines() and "succeeded" in text, text
        assert f"prefix {sys.prefix}" in text.splitlines(), text
        text, rc = out["job without token"]
        assert rc != 0 and "Missing authentication token" in text, text
        text, rc = out["GCS without token"]
        assert rc != 0 and "InvalidAuthToken" in text, text

        # Nothing of the head listens beyond loopback: not the dashboard/job server, not the GCS,
        # raylet, agents, metrics exporters, Ray client server, nor the job's worker processes.
        sockets = head.listening_sockets()
        assert [s for s in sockets if not is_loopback(s[0])] == []
        listening = {(addr, port) for addr, port, _ in sockets}
        for name in ("port", "dashboard_port", "client_server_port", "dashboard_agent_port",
                     "dashboard_metrics_port", "autoscaler_metrics_port"):
            assert ("127.0.0.1", head.ports[name]) in listening, name

        # The stop script ends every process of this head and frees its ports.
        stopped = head.stop()
        assert stopped.returncode == 0 and "Stopped the head" in stopped.stdout, stopped.stdout
        assert head.processes() == {}
        for port in (head.ports["port"], head.ports["dashboard_port"]):
            with socket.socket() as s, pytest.raises(ConnectionRefusedError):
                s.connect(("127.0.0.1", port))


# ---------------------------------------------------------------------------------- binding, tokens, secrets
def test_local_services_bind_loopback_and_the_local_head_uses_token_auth() -> None:
    """Static half; the real runs are the local head above (sockets listed) and tests/test_tracking.py's servers."""
    script = (REPO_ROOT / "cluster" / "start_local_head.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "--node-ip-address=127.0.0.1" in code and "--dashboard-host=127.0.0.1" in code
    assert "0.0.0.0" not in script
    assert "export RAY_AUTH_MODE=token" in code and "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=" in code
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in code  # else Ray swaps 127.0.0.1 for the LAN address
    # the token's value only ever goes to its mode-600 file, never to the output
    uses = [line.strip() for line in code.splitlines() if re.search(r"\$\{?RAY_AUTH_TOKEN\b(?!_PATH)", line)]
    assert uses and all(re.search(r'> "\$TOKEN_PATH"', u) or u.startswith("if [[ -n") for u in uses), uses
    launcher = (REPO_ROOT / "singe_dist" / "distributed" / "ray_runtime.py").read_text()
    assert '_node_ip_address="127.0.0.1"' in launcher and "include_dashboard=False" in launcher
    # every MLflow server the tests start comes from the one helper, which binds the loopback address
    assert '"server", "--host", "127.0.0.1"' in (REPO_ROOT / "tests" / "mlflow_server.py").read_text()
    assert "start_mlflow_server(" in (REPO_ROOT / "tests" / "test_tracking.py").read_text()
    for test_file in (REPO_ROOT / "tests").glob("test_*.py"):  # no test starts a server of its own
        if test_file.name != Path(__file__).name:
            assert '"server", "--host"' not in test_file.read_text(), test_file.name
