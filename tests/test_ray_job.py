"""The main job through the real `ray job submit` to a local head (127.0.0.1, token auth).

One job does the whole distributed path: 2 Ray Train workers (Gloo, DDP), a worker killed after step 1
(fault injection), Ray Train restarting the group from the last checkpoint. Its final plan must equal
an uninterrupted 2-rank run of the same loop, which runs here over a plain Gloo group (Ray only
launches; the loop is the same code).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from singe_dist.checkpoint import save_checkpoint
from singe_dist.config import load_config
from singe_dist.data.convert import digits_to_shards
from singe_dist.demo import DEMO_CONFIG
from singe_dist.engine.collective import TorchCollective
from singe_dist.engine.faults import FAIL_ENV, FAIL_MODE_ENV
from singe_dist.engine.loop import PruneJob
from singe_dist.models import build_model
from singe_dist.plan.plan import Plan

from .support import as_sets, run_cli, small_job_overrides
from .ray_head import CLIENT_VARS_TO_DROP, REPO_ROOT, free_ports, local_ray_head, ray_head  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def _overrides(shards, baseline, out_dir) -> list[str]:  # noqa: ANN001
    return small_job_overrides(shards, baseline, out_dir, prune__steps=3, distributed__num_workers=2,
                               distributed__max_failures=1, distributed__torch_threads=1)


def _reference_rank(rank: int, init_file: str, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        config = load_config(DEMO_CONFIG, overrides)
        PruneJob(config, TorchCollective(torch.device("cpu")), log=lambda _m: None).run()
    finally:
        dist.destroy_process_group()


def test_ray_job_submit_survives_a_killed_worker_and_ends_with_the_uninterrupted_plan(
    digits_shards, digits_baseline, tmp_path
) -> None:
    reference_dir = tmp_path / "reference"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_reference_rank, args=(str(tmp_path / "init"), _overrides(digits_shards, digits_baseline, reference_dir)),
             nprocs=2, join=True)

    run_dir = tmp_path / "ray-run"
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump({"env_vars": {
        FAIL_ENV: "1:1", FAIL_MODE_ENV: "exit",  # rank 1's process dies right after step 1's checkpoint
        "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}}))
    sets = as_sets(_overrides(digits_shards, digits_baseline, run_dir))
    with local_ray_head(num_cpus=2) as head:
        result = head.submit([sys.executable, "jobs/prune.py", "--config", "jobs/configs/demo.yaml", *sets],
                             working_dir=REPO_ROOT, runtime_env=runtime_env, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "fault injection: rank 1 fails after step 1" in result.stdout  # the failure really happened

    report = json.loads((run_dir / "report.json").read_text())
    assert report["world_size"] == 2
    assert report["final"]["fraction_removed"] >= 0.5
    last = report["steps"][-1]
    assert last["macs"] <= last["target"] and last["target"] - last["macs"] < last["last_unit_cost"]
    assert [r["step"] for r in report["steps"]] == [1, 2, 3]
    assert Plan.load(run_dir / "plan.json") == Plan.load(reference_dir / "plan.json")


def test_unreachable_ray_address_is_one_clear_line(digits_shards, tmp_path) -> None:
    (port,) = free_ports(1)
    sets = small_job_overrides(digits_shards, None, tmp_path / "run", distributed__num_workers=2,
                               distributed__address=f"127.0.0.1:{port}")
    proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"cannot connect to the Ray cluster at 127.0.0.1:{port}" in last


def test_more_workers_than_resources_and_missing_shards_are_clear_errors(digits_shards, tmp_path, ray_head) -> None:  # noqa: F811
    env = ray_head.client_env()
    sets = small_job_overrides(digits_shards, None, tmp_path / "run", distributed__num_workers=5,
                               distributed__address=ray_head.address)
    proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets), env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "not enough for distributed.num_workers: 5 workers x 1 CPU" in proc.stderr.strip().splitlines()[-1]

    sets = small_job_overrides({"train": "/nonexistent/train-{000000..000003}.tar", "val": digits_shards["val"]},
                               None, tmp_path / "run2", distributed__num_workers=2,
                               distributed__address=ray_head.address)
    proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets), env=env)
    assert proc.returncode == 2
    assert "/nonexistent/train-" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run2").exists()  # nothing was started


# ---------------------------------------------------------------------------------- docs/CLUSTER.md's local head
# Appended to the documented command, so that the demo's job takes seconds (a later --set wins); the paths,
# the config and the submission are the documented ones.
QUICK = ["--set", "prune.steps=2", "--set", "finetune.iters_per_step=4", "--set", "finetune.final_iters=2",
         "--set", "criterion.steps=2", "--set", "criterion.calibration_batches=1", "--set", "run.latency_batch_sizes=[1]"]
OUT_DIR_SET = ' --set "run.out_dir=$PWD/runs/demo/prune-ray"'


def _local_head_commands() -> tuple[str, list[str]]:
    """The "Local head" section of docs/CLUSTER.md and the commands of its first bash block (continuations joined)."""
    section = (REPO_ROOT / "docs" / "CLUSTER.md").read_text().split("## Local head", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return section, [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _fresh_clone(dest: Path) -> None:
    """The checkout as a fresh clone has it: its files but the git-ignored ones (no runs/, no .git), and
    ``.venv`` linked to this environment (git-ignored, so Ray does not pack it)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():  # a tracked file deleted in the checkout is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, dest / name)
    (dest / ".venv").symlink_to(REPO_ROOT / ".venv")


def _make_demo_inputs(clone: Path) -> None:
    """What `make demo` leaves in runs/: the demo's digits shards and a baseline (untrained: paths, not accuracy)."""
    config = load_config(DEMO_CONFIG)
    digits_to_shards(clone / "runs" / "data" / "digits", size=config.data.image_size, per_shard=1000)
    save_checkpoint(clone / config.model.checkpoint, build_model(config.model.arch, config.model.num_classes),
                    config.model.arch, config.model.num_classes)


def test_cluster_md_local_head_commands_run_the_demo_and_a_relative_out_dir_is_refused(ray_head, tmp_path) -> None:  # noqa: F811
    """From a fresh clone after `make demo`: the section's commands, pasted (the fixture's head stands for
    start_local_head.sh on its default ports), end with the table and the outputs where the section says;
    the same command without its run.out_dir line is refused in one line and writes nothing anywhere."""
    section, commands = _local_head_commands()
    assert commands[1].startswith("cluster/start_local_head.sh") and commands[-1].startswith("cluster/stop_local_head.sh")
    assert commands[2] == "source /tmp/singe-ray-$(id -u)-6379/client.env"
    activate = commands[0].split("#")[0].strip()
    (submit,) = [c for c in commands if c.startswith("ray job submit ")]
    assert activate == "source .venv/bin/activate" and submit.endswith(OUT_DIR_SET)
    for output in ("runs/demo/prune-ray/report.json", "`plan.json`", "`pruned.pt`", "runs/demo/mlflow.db"):
        assert output in " ".join(section.split()), output

    clone = tmp_path / "singe-dist"
    _fresh_clone(clone)
    _make_demo_inputs(clone)
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS_TO_DROP} | {"PWD": str(clone)}
    client_env = f"source {shlex.quote(str(ray_head.state_dir / 'client.env'))}"

    def paste(command: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-c", "\n".join(["set -e", activate, client_env, command])], cwd=clone, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    jobs = {"documented": paste(f"{submit} {shlex.join(QUICK)}"),
            "relative out_dir": paste(submit.removesuffix(OUT_DIR_SET))}
    out = {name: (p.communicate(timeout=900)[0], p.returncode) for name, p in jobs.items()}

    text, rc = out["documented"]
    assert rc == 0 and "succeeded" in text, text[-6000:]
    assert "| model" in text and "| final" in text, text[-6000:]  # the before/after table
    run_dir = clone / "runs" / "demo" / "prune-ray"
    assert {"report.json", "plan.json", "pruned.pt"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "report.json").read_text())["world_size"] == 2
    assert (clone / "runs" / "demo" / "mlflow.db").is_file()

    text, rc = out["relative out_dir"]
    errors = {line for line in text.splitlines() if "singe-dist prune: error:" in line}  # Ray repeats the log's end
    assert rc != 0 and len(errors) == 1, text[-4000:]
    (error,) = errors
    assert error.endswith("singe-dist prune: error: run.out_dir=runs/demo/prune: under `ray job submit` a relative "
                          "path resolves in Ray's copy of the working directory, which has no git-ignored files "
                          "(runs/) and is deleted after the job; pass an absolute path on storage that every node "
                          "sees (a local head: --set KEY=$PWD/...), or a URL"), error
    assert not (clone / "runs" / "demo" / "prune").exists()
    # neither job wrote into Ray's copies of the working dir (kept until Ray's cache is full)
    copies = list((ray_head.state_dir / "ray").glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    assert copies and [c for c in copies if (c / "runs").exists()] == []
