"""Offline checks of the cluster configs in cluster/.

    python cluster/validate.py        # prints one line per problem; exit status 1 if any

* ``cluster/ray-cluster.yaml`` goes through Ray's own validation: ``prepare_config`` (merges the
  provider's defaults and checks the docker section) and ``validate_config`` (Ray's JSON schema of
  the cluster launcher), then project rules (image tags of this Ray, GPU worker type, token auth,
  dashboard on loopback, files mounted from the repository exist).
* ``cluster/kuberay/*.yaml`` are checked against the KubeRay ``ray.io/v1`` CRDs by explicit rules
  (no CRD schema ships in any installed package and nothing may be downloaded): required fields,
  field names, types, replica bounds, GPU limits, Ray version of the images. Then Ray reads the
  cluster spec the way its KubeRay autoscaler does (RayCluster -> autoscaling config, which ends in
  Ray's schema validation), and ``runtimeEnvYAML`` goes through Ray's ``RuntimeEnv`` validation.

None of this contacts a cloud or a Kubernetes API server: what those would reject beyond these
rules (quotas, instance types, admission webhooks, image pulls) is not covered.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
LAUNCHER_CONFIG = REPO_ROOT / "cluster" / "ray-cluster.yaml"
RAYCLUSTER = REPO_ROOT / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB = REPO_ROOT / "cluster" / "kuberay" / "rayjob.yaml"
DOCKERFILE = REPO_ROOT / "cluster" / "Dockerfile"
# Where cluster/Dockerfile puts the code in the image (its WORKDIR, on PYTHONPATH): the manifests'
# entrypoints name files under it, which are this repository's files.
CODE_DIR = "/home/ray/singe-dist"

# Field names of the KubeRay ray.io/v1 types used here (KubeRay v1.5). An unknown name is
# almost always a typo, which the API server would silently prune.
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "authOptions",
}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP_FIELDS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams", "template",
    "scaleStrategy", "idleTimeoutSeconds", "suspend", "resources", "labels",
}
AUTOSCALER_OPTIONS_FIELDS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
    "idleTimeoutSeconds", "upscalingMode", "version",
}
AUTH_OPTIONS_FIELDS = {"mode", "secretName", "enableK8sTokenAuth"}
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
    "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
    "entrypointMemory", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}
SERVICE_TYPES = {"ClusterIP", "NodePort", "LoadBalancer"}
# Kubernetes object names that KubeRay turns into Service names: DNS-1035 labels. A RayJob's
# cluster is named <rayjob>-<5 characters>, hence KubeRay's shorter limit for RayJob names.
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_RAYCLUSTER_NAME = 63
MAX_RAYJOB_NAME = 47


class ConfigProblems(ValueError):
    """All problems found in one config, one line each."""

    def __init__(self, where: str, problems: list[str]):
        self.where = where
        self.problems = problems
        super().__init__(f"{where}: " + "; ".join(problems))


def ray_version() -> str:
    import ray

    return ray.__version__


def load_yaml(path: Path) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


# --- shared rules ---------------------------------------------------------------------------------

def image_problems(image: Any, where: str, *, gpu: bool | None = None) -> list[str]:
    """The image must carry this Ray's version in its tag (rayproject/ray:<version>[-variant])."""
    if not isinstance(image, str) or not image.strip():
        return [f"{where}: image must be a non-empty string"]
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return [f"{where}: image {image!r} has no tag (pin the Ray version, e.g. rayproject/ray:{ray_version()}-py311)"]
    version = ray_version()
    problems = []
    if name.startswith("rayproject/"):
        if not (tag == version or tag.startswith(version + "-")):
            problems.append(f"{where}: image {image!r} is not Ray {version} (the installed Ray and uv.lock)")
        is_gpu = "-gpu" in tag or re.search(r"-cu\d+", tag) is not None
        if gpu is True and not is_gpu:
            problems.append(f"{where}: GPU nodes need a GPU image (rayproject/ray:{version}-py311-gpu), got {image!r}")
    elif version not in tag:
        problems.append(f"{where}: cannot tell the Ray version of {image!r}: tag it with {version}")
    return problems


def quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity ("170Gi", "500m", 4) as a number; ValueError if malformed."""
    from ray.autoscaler._private.kuberay.utils import parse_quantity

    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"not a quantity: {value!r}")
    try:
        return Decimal(parse_quantity(value))
    except (ValueError, InvalidOperation, TypeError) as e:
        raise ValueError(f"not a quantity: {value!r} ({e})") from None


def entrypoint_files(entrypoint: str) -> list[str]:
    """Repository files a ``python script.py --config file`` entrypoint needs (paths in the image's
    :data:`CODE_DIR` are given relative to it, i.e. as repository paths)."""
    tokens = [t[len(CODE_DIR) + 1:] if t.startswith(CODE_DIR + "/") else t for t in shlex.split(entrypoint)]
    files = [t for t in tokens if t.endswith(".py")][:1]
    for i, token in enumerate(tokens):
        if token == "--config" and i + 1 < len(tokens):
            files.append(tokens[i + 1])
        elif token.startswith("--config="):
            files.append(token.split("=", 1)[1])
    return files


def missing_repo_files(paths: list[str], repo_root: Path = REPO_ROOT) -> list[str]:
    return [p for p in paths if Path(p).is_absolute() or not (repo_root / p).is_file()]


# --- the image (cluster/Dockerfile) ----------------------------------------------------------------

def dockerfile_problems(text: str, where: str = "cluster/Dockerfile") -> list[str]:
    """The image the manifests run: Ray's GPU image of this version, uv.lock installed frozen, the code
    copied to :data:`CODE_DIR` and put on PYTHONPATH (the driver and the Ray Train workers import it)."""
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", "\n".join(lines), re.M))
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    problems = []
    if len(froms) != 1:
        problems.append(f"{where}: exactly one FROM expected, got {len(froms)}")
    else:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), froms[0])
        if not base.startswith("rayproject/ray:"):
            problems.append(f"{where}: FROM must be a rayproject/ray image, got {base!r}")
        problems += image_problems(base, f"{where}: FROM", gpu=True)
    run = " ".join(line for line in lines if line.upper().startswith("RUN "))
    if "uv export --frozen" not in run or "uv.lock" not in " ".join(lines):
        problems.append(f"{where}: must install the dependencies from uv.lock (uv export --frozen)")
    if f"WORKDIR {CODE_DIR}" not in lines:
        problems.append(f"{where}: WORKDIR must be {CODE_DIR} (the manifests' entrypoints point there)")
    for package in ("singe_dist", "jobs"):
        if not any(line.startswith("COPY") and line.split()[-2] == package for line in lines):
            problems.append(f"{where}: must COPY {package} into the image")
    if not re.search(rf"PYTHONPATH={re.escape(CODE_DIR)}\b", " ".join(lines)):
        problems.append(f"{where}: must set PYTHONPATH={CODE_DIR} (Ray Train workers import singe_dist)")
    return problems


# --- Ray cluster launcher -------------------------------------------------------------------------

def validate_launcher_config(config: dict, repo_root: Path = REPO_ROOT) -> dict:
    """Ray's own validation of a cluster-launcher config, then the project's rules.

    Returns the config as ``ray up`` would see it after merging the provider defaults.
    Raises ConfigProblems (project rules) or Ray's/jsonschema's own exception (schema).
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)

    where = "ray-cluster.yaml"
    problems: list[str] = []
    docker = prepared.get("docker") or {}
    node_types = prepared["available_node_types"]
    head_type = prepared["head_node_type"]
    gpu_types = [
        name for name, t in node_types.items()
        if name != head_type and isinstance(t["resources"].get("GPU"), int) and t["resources"]["GPU"] > 0
    ]
    if not gpu_types:
        problems.append(f"{where}: no worker node type declares resources.GPU > 0")
    if docker:
        head_image = docker.get("head_image") or docker.get("image")
        problems += image_problems(head_image, f"{where}: docker.head_image")
        for name in node_types:
            if name == head_type:
                continue
            image = (node_types[name].get("docker") or {}).get("worker_image") or docker.get("worker_image") or docker.get("image")
            problems += image_problems(image, f"{where}: worker image of {name}", gpu=name in gpu_types)
    for name, t in node_types.items():
        if t.get("min_workers", 0) > t.get("max_workers", 0):
            problems.append(f"{where}: {name}: min_workers > max_workers")
        if t.get("max_workers", 0) > prepared["max_workers"]:
            problems.append(f"{where}: {name}: max_workers exceeds the global max_workers")

    # Token authentication: every `ray start` must run with RAY_AUTH_MODE=token (in the command
    # or in the container's environment), and every node needs the token file.
    run_options = " ".join(str(o) for o in docker.get("run_options", []))
    token_env_in_container = bool(docker) and re.search(r"RAY_AUTH_MODE=token\b", run_options) is not None
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in prepared[key] if "ray start" in c]
        if not starts:
            problems.append(f"{where}: {key} has no `ray start`")
        for command in starts:
            if not token_env_in_container and "RAY_AUTH_MODE=token" not in command:
                problems.append(f"{where}: {key}: `ray start` without RAY_AUTH_MODE=token")
    for command in prepared["head_start_ray_commands"]:
        if "--head" in command and not re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", command):
            problems.append(f"{where}: the head's dashboard must listen on 127.0.0.1 (reach it with `ray dashboard`)")
    mounts = prepared.get("file_mounts", {})
    if "~/.ray/auth_token" not in mounts:
        problems.append(f"{where}: file_mounts must copy the token to ~/.ray/auth_token on every node")
    for remote, local in mounts.items():
        if not str(local).startswith("~") and not (repo_root / local).exists():
            problems.append(f"{where}: file_mounts[{remote!r}]: {local!r} does not exist in the repository")
    setup = " && ".join(prepared.get("setup_commands", []))
    if not re.search(r"(pip install[^&]*-e \.|uv sync)", setup):
        problems.append(f"{where}: setup_commands do not install the project (pip install -e . or uv sync)")
    if problems:
        raise ConfigProblems(where, problems)
    return prepared


# --- KubeRay ---------------------------------------------------------------------------------------

def _unknown(fields: dict, known: set[str], where: str) -> list[str]:
    return [f"{where}.{k}: unknown field (KubeRay ray.io/v1)" for k in fields if k not in known]


def _int_field(obj: dict, key: str, where: str, *, required: bool, minimum: int = 0) -> tuple[int | None, list[str]]:
    if key not in obj:
        return None, [f"{where}.{key}: required"] if required else []
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        return None, [f"{where}.{key}: must be an integer, got {value!r}"]
    if value < minimum:
        return None, [f"{where}.{key}: must be >= {minimum}, got {value}"]
    return value, []


def _string_map(obj: Any, where: str) -> list[str]:
    if obj is None:
        return []
    if not isinstance(obj, dict):
        return [f"{where}: must be a map of strings"]
    return [f"{where}.{k}: value must be a string (quote it), got {v!r}" for k, v in obj.items() if not isinstance(v, str)]


def _pod_template_problems(template: Any, where: str, *, gpu_image: bool | None) -> tuple[list[str], dict]:
    """Checks the pod template; returns (problems, {resource name: limit of the Ray container})."""
    if not isinstance(template, dict) or not isinstance(template.get("spec"), dict):
        return [f"{where}.template.spec: required"], {}
    spec = template["spec"]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [f"{where}.template.spec.containers: at least one container required"], {}
    problems: list[str] = []
    names = [c.get("name") for c in containers if isinstance(c, dict)]
    if len(names) != len(containers) or not all(isinstance(n, str) and n for n in names):
        problems.append(f"{where}.template.spec.containers: every container needs a name")
    elif len(set(names)) != len(names):
        problems.append(f"{where}.template.spec.containers: container names must be unique")
    volumes = {v.get("name") for v in spec.get("volumes", []) if isinstance(v, dict)}
    limits: dict = {}
    for i, container in enumerate(containers):
        cwhere = f"{where}.template.spec.containers[{i}]"
        if not isinstance(container, dict):
            problems.append(f"{cwhere}: must be a map")
            continue
        # KubeRay runs Ray in the first container.
        problems += image_problems(container.get("image"), f"{cwhere}.image", gpu=gpu_image if i == 0 else None)
        for mount in container.get("volumeMounts", []):
            if mount.get("name") not in volumes:
                problems.append(f"{cwhere}.volumeMounts: no volume named {mount.get('name')!r}")
        resources = container.get("resources") or {}
        parsed: dict[str, dict[str, Decimal]] = {}
        for kind in ("requests", "limits"):
            for name, value in (resources.get(kind) or {}).items():
                try:
                    parsed.setdefault(kind, {})[name] = quantity(value)
                except ValueError as e:
                    problems.append(f"{cwhere}.resources.{kind}.{name}: {e}")
        for name, value in parsed.get("limits", {}).items():
            if name.endswith("/gpu"):
                if value <= 0 or value != value.to_integral_value():
                    problems.append(f"{cwhere}.resources.limits.{name}: GPUs must be a positive whole number, got {resources['limits'][name]!r}")
                request = parsed.get("requests", {}).get(name)
                if request is not None and request != value:
                    problems.append(f"{cwhere}.resources: requests.{name} must equal limits.{name} (extended resource)")
        for name, request in parsed.get("requests", {}).items():
            limit = parsed.get("limits", {}).get(name)
            if name.endswith("/gpu") and limit is None:
                problems.append(f"{cwhere}.resources.limits.{name}: GPUs must be set in limits")
            elif limit is not None and request > limit:
                problems.append(f"{cwhere}.resources: requests.{name} exceeds limits.{name}")
        if i == 0:
            limits = parsed.get("limits", {})
    return problems, limits


def raycluster_spec_problems(spec: Any, where: str) -> list[str]:
    """Structural rules of a RayClusterSpec (also RayJob.spec.rayClusterSpec)."""
    if not isinstance(spec, dict):
        return [f"{where}: must be a map"]
    problems = _unknown(spec, RAYCLUSTER_SPEC_FIELDS, where)
    version = ray_version()
    if spec.get("rayVersion") != version:
        problems.append(f"{where}.rayVersion: must be {version!r} (the installed Ray), got {spec.get('rayVersion')!r}")
    auth = spec.get("authOptions")
    if not isinstance(auth, dict) or auth.get("mode") != "token":
        problems.append(f"{where}.authOptions.mode: must be 'token' (Ray token authentication, KubeRay >= 1.5.1)")
    else:
        problems += _unknown(auth, AUTH_OPTIONS_FIELDS, f"{where}.authOptions")
    if "enableInTreeAutoscaling" in spec and not isinstance(spec["enableInTreeAutoscaling"], bool):
        problems.append(f"{where}.enableInTreeAutoscaling: must be true or false")
    options = spec.get("autoscalerOptions")
    if options is not None:
        problems += _unknown(options, AUTOSCALER_OPTIONS_FIELDS, f"{where}.autoscalerOptions")
        if "upscalingMode" in options and options["upscalingMode"] not in UPSCALING_MODES:
            problems.append(f"{where}.autoscalerOptions.upscalingMode: one of {sorted(UPSCALING_MODES)}")
        problems += _int_field(options, "idleTimeoutSeconds", f"{where}.autoscalerOptions", required=False)[1]

    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        problems.append(f"{where}.headGroupSpec: required")
    else:
        hwhere = f"{where}.headGroupSpec"
        problems += _unknown(head, HEAD_GROUP_FIELDS, hwhere)
        problems += _string_map(head.get("rayStartParams"), f"{hwhere}.rayStartParams")
        if "serviceType" in head and head["serviceType"] not in SERVICE_TYPES:
            problems.append(f"{hwhere}.serviceType: one of {sorted(SERVICE_TYPES)}")
        problems += _pod_template_problems(head.get("template"), hwhere, gpu_image=None)[0]

    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        problems.append(f"{where}.workerGroupSpecs: at least one (GPU) worker group required")
        groups = []
    names = []
    gpu_groups = 0
    for i, group in enumerate(groups):
        gwhere = f"{where}.workerGroupSpecs[{i}]"
        if not isinstance(group, dict):
            problems.append(f"{gwhere}: must be a map")
            continue
        problems += _unknown(group, WORKER_GROUP_FIELDS, gwhere)
        name = group.get("groupName")
        if not isinstance(name, str) or not DNS1035_LABEL.match(name):
            problems.append(f"{gwhere}.groupName: required, lowercase letters, digits and '-', got {name!r}")
        names.append(name)
        minimum, p1 = _int_field(group, "minReplicas", gwhere, required=True)
        maximum, p2 = _int_field(group, "maxReplicas", gwhere, required=True)
        replicas, p3 = _int_field(group, "replicas", gwhere, required=True)
        problems += p1 + p2 + p3 + _int_field(group, "numOfHosts", gwhere, required=False, minimum=1)[1]
        if None not in (minimum, maximum, replicas) and not minimum <= replicas <= maximum:
            problems.append(f"{gwhere}: needs minReplicas <= replicas <= maxReplicas, got {minimum} <= {replicas} <= {maximum}")
        params = group.get("rayStartParams")
        problems += _string_map(params, f"{gwhere}.rayStartParams")
        template = group.get("template")
        limits = {}
        if isinstance(template, dict):
            containers = (template.get("spec") or {}).get("containers") or [{}]
            first_limits = ((containers[0] if isinstance(containers[0], dict) else {}).get("resources") or {}).get("limits") or {}
            has_gpu = any(str(k).endswith("/gpu") for k in first_limits)
        else:
            has_gpu = False
        template_problems, limits = _pod_template_problems(template, gwhere, gpu_image=True if has_gpu else None)
        problems += template_problems
        gpus = next((v for k, v in limits.items() if k.endswith("/gpu")), None)
        if gpus is not None and gpus > 0:
            gpu_groups += 1
            if isinstance(params, dict) and "num-gpus" in params:
                try:
                    declared = Decimal(str(params["num-gpus"]))
                except InvalidOperation:
                    declared = None
                if declared != gpus:
                    problems.append(f"{gwhere}.rayStartParams.num-gpus: {params['num-gpus']!r} differs from the GPU limit {gpus}")
    if len([n for n in names if n is not None]) != len({n for n in names if n is not None}):
        problems.append(f"{where}.workerGroupSpecs: groupName values must be unique")
    if groups and not gpu_groups:
        problems.append(f"{where}.workerGroupSpecs: no group has a GPU limit (nvidia.com/gpu)")
    if problems:
        return problems

    # Ray's own reading of the spec: what the autoscaler of this cluster will compute from it.
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    try:
        derived = _derive_autoscaling_config_from_ray_cr(
            {"metadata": {"name": "validate", "namespace": "default"}, "spec": copy.deepcopy(spec)}
        )
    except Exception as e:  # Ray raises ValueError, KeyError, jsonschema errors...
        return [f"{where}: Ray's autoscaler cannot read this spec: {type(e).__name__}: {e}"]
    for group in groups:
        resources = derived["available_node_types"][group["groupName"]]["resources"]
        if not resources.get("CPU"):
            problems.append(f"{where}: Ray would see no CPU in worker group {group['groupName']!r}")
    return problems


def raycluster_problems(doc: Any, where: str = "raycluster.yaml") -> list[str]:
    if not isinstance(doc, dict):
        return [f"{where}: not a YAML map"]
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"{where}: apiVersion must be ray.io/v1, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != "RayCluster":
        problems.append(f"{where}: kind must be RayCluster, got {doc.get('kind')!r}")
    problems += _name_problems(doc, where, MAX_RAYCLUSTER_NAME)
    return problems + raycluster_spec_problems(doc.get("spec"), f"{where}: spec")


def _name_problems(doc: dict, where: str, max_length: int) -> list[str]:
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not DNS1035_LABEL.match(name) or len(name) > max_length:
        return [f"{where}: metadata.name must be a DNS-1035 label of at most {max_length} characters, got {name!r}"]
    return []


def runtime_env_problems(text: Any, where: str) -> list[str]:
    """runtimeEnvYAML: YAML of a runtime_env that Ray accepts and a remote submitter can use."""
    from ray.runtime_env import RuntimeEnv

    if not isinstance(text, str):
        return [f"{where}: must be a YAML string (use `|`)"]
    try:
        env = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"{where}: not YAML: {e}"]
    if not isinstance(env, dict):
        return [f"{where}: must be a YAML map"]
    problems = [f"{where}.{k}: not a runtime_env field" for k in env if k not in RuntimeEnv.known_fields]
    working_dir = env.get("working_dir")
    if isinstance(working_dir, str) and "://" not in working_dir:
        problems.append(f"{where}.working_dir: must be a remote URI (the submitter pod has no checkout), got {working_dir!r}")
    try:
        RuntimeEnv(**env)
    except Exception as e:
        problems.append(f"{where}: Ray rejects this runtime_env: {type(e).__name__}: {e}")
    return problems


def rayjob_problems(doc: Any, where: str = "rayjob.yaml", *, check_files: bool = True,
                    repo_root: Path = REPO_ROOT) -> list[str]:
    if not isinstance(doc, dict):
        return [f"{where}: not a YAML map"]
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(f"{where}: apiVersion must be ray.io/v1, got {doc.get('apiVersion')!r}")
    if doc.get("kind") != "RayJob":
        problems.append(f"{where}: kind must be RayJob, got {doc.get('kind')!r}")
    problems += _name_problems(doc, where, MAX_RAYJOB_NAME)
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return problems + [f"{where}: spec required"]
    swhere = f"{where}: spec"
    problems += _unknown(spec, RAYJOB_SPEC_FIELDS, swhere)
    entrypoint = spec.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        problems.append(f"{swhere}.entrypoint: required")
    else:
        try:
            files = entrypoint_files(entrypoint)
        except ValueError as e:
            problems.append(f"{swhere}.entrypoint: not a shell command line: {e}")
            files = []
        if not files:
            problems.append(f"{swhere}.entrypoint: names no Python script")
        if check_files:
            problems += [f"{swhere}.entrypoint: {p} is not a file of the repository" for p in missing_repo_files(files, repo_root)]
    if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
        problems.append(f"{swhere}.submissionMode: one of {sorted(SUBMISSION_MODES)}, got {spec.get('submissionMode')!r}")
    for key in ("shutdownAfterJobFinishes", "suspend"):
        if key in spec and not isinstance(spec[key], bool):
            problems.append(f"{swhere}.{key}: must be true or false")
    problems += _int_field(spec, "ttlSecondsAfterFinished", swhere, required=False)[1]
    problems += _int_field(spec, "backoffLimit", swhere, required=False)[1]
    problems += _int_field(spec, "activeDeadlineSeconds", swhere, required=False, minimum=1)[1]
    has_cluster, has_selector = "rayClusterSpec" in spec, bool(spec.get("clusterSelector"))
    if has_cluster == has_selector:
        problems.append(f"{swhere}: exactly one of rayClusterSpec and clusterSelector")
    if spec.get("shutdownAfterJobFinishes") and not has_cluster:
        problems.append(f"{swhere}.shutdownAfterJobFinishes: needs a rayClusterSpec (a selected cluster is not the job's to delete)")
    if "runtimeEnvYAML" in spec:
        problems += runtime_env_problems(spec["runtimeEnvYAML"], f"{swhere}.runtimeEnvYAML")
    problems += _code_source_problems(spec, swhere)
    if has_cluster:
        problems += raycluster_spec_problems(spec["rayClusterSpec"], f"{swhere}.rayClusterSpec")
    return problems


def _code_source_problems(spec: dict, swhere: str) -> list[str]:
    """The submitter pod has no checkout: the code comes from the image (entrypoint under CODE_DIR, an
    image that is not plain Ray) or from a remote ``working_dir`` in runtimeEnvYAML."""
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
    except yaml.YAMLError:
        return []  # reported by runtime_env_problems
    if isinstance(env, dict) and env.get("working_dir"):
        return []
    problems = []
    entrypoint = spec.get("entrypoint") or ""
    if CODE_DIR + "/" not in entrypoint:
        problems.append(f"{swhere}.entrypoint: without a working_dir the script must be the image's ({CODE_DIR}/...)")
    head = ((spec.get("rayClusterSpec") or {}).get("headGroupSpec") or {}).get("template") or {}
    containers = (head.get("spec") or {}).get("containers") or [{}]
    image = containers[0].get("image") if isinstance(containers[0], dict) else None
    if isinstance(image, str) and image.startswith("rayproject/"):
        problems.append(f"{swhere}: the head image {image!r} has no singe-dist code: use the image of cluster/Dockerfile "
                        "or a remote working_dir")
    return problems


# --- command line ----------------------------------------------------------------------------------

def all_problems(repo_root: Path = REPO_ROOT) -> list[str]:
    problems = []
    try:
        validate_launcher_config(load_yaml(repo_root / "cluster" / "ray-cluster.yaml"), repo_root)
    except ConfigProblems as e:
        problems += e.problems
    except Exception as e:  # Ray's schema errors
        problems.append(f"ray-cluster.yaml: {type(e).__name__}: {str(e).splitlines()[0]}")
    problems += raycluster_problems(load_yaml(repo_root / "cluster" / "kuberay" / "raycluster.yaml"))
    problems += rayjob_problems(load_yaml(repo_root / "cluster" / "kuberay" / "rayjob.yaml"), repo_root=repo_root)
    dockerfile = repo_root / "cluster" / "Dockerfile"
    problems += dockerfile_problems(dockerfile.read_text()) if dockerfile.is_file() else ["cluster/Dockerfile: missing"]
    return problems


def main() -> int:
    problems = all_problems()
    for line in problems:
        print(line)
    if not problems:
        print("cluster configs: OK (offline checks)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
