"""The main job through the real `ray job submit` to a local head (127.0.0.1, token auth).

One job does the whole distributed path: 2 Ray Train workers (Gloo, DDP), a worker killed after step 1
(fault injection), Ray Train restarting the group from the last checkpoint. Its final plan must equal
an uninterrupted 2-rank run of the same loop, which runs here over a plain Gloo group (Ray only
launches; the loop is the same code).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from singe_dist.config import load_config
from singe_dist.demo import DEMO_CONFIG
from singe_dist.engine.collective import TorchCollective
from singe_dist.engine.faults import FAIL_ENV, FAIL_MODE_ENV
from singe_dist.engine.loop import PruneJob
from singe_dist.plan.plan import Plan

from .support import as_sets, run_cli, small_job_overrides
from .ray_head import REPO_ROOT, free_ports, local_ray_head

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


def test_more_workers_than_resources_and_missing_shards_are_clear_errors(digits_shards, tmp_path) -> None:
    with local_ray_head(num_cpus=2) as head:
        env = head.client_env()
        sets = small_job_overrides(digits_shards, None, tmp_path / "run", distributed__num_workers=5,
                                   distributed__address=head.address)
        proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets), env=env)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "not enough for distributed.num_workers: 5 workers x 1 CPU" in proc.stderr.strip().splitlines()[-1]

        sets = small_job_overrides({"train": "/nonexistent/train-{000000..000003}.tar", "val": digits_shards["val"]},
                                   None, tmp_path / "run2", distributed__num_workers=2,
                                   distributed__address=head.address)
        proc = run_cli("prune", "--config", str(DEMO_CONFIG), *as_sets(sets), env=env)
        assert proc.returncode == 2
        assert "/nonexistent/train-" in proc.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "run2").exists()  # nothing was started
