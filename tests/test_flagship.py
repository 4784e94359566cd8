"""The flagship config (jobs/configs/resnet50_imagenet.yaml) through the real `ray job submit`, so it cannot rot.

The same code path as benchmarks/imagenet_rehearsal.py (its :func:`submit_flagship` and overrides),
at a test's scale: ResNet-50 at 32 px on 10 classes of the rehearsal data set made by
benchmarks/imagenet_rehearsal_data.py (real images, JPEG shards by `singe-dist shards --imagefolder`),
2 Ray Train workers of 1 CPU on a local head with token auth, one pruning step with the config's
``round_to: 8``, the MLflow run in an SQLite store; then the pruned checkpoint reloaded and compared
with a replay of its plan.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from .ray_head import REPO_ROOT, ray_head  # noqa: F401

pytestmark = pytest.mark.slow


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flagship_config_runs_through_ray_job_submit(ray_head, tmp_path) -> None:  # noqa: F811
    make_data = _load("imagenet_rehearsal_data").make_data
    rehearsal = _load("imagenet_rehearsal")
    data = make_data(tmp_path / "data", classes=10, train_per_class=4, val_per_class=2, per_shard=10,
                     val_per_shard=10, max_side=48)
    assert data["train"]["shards"] == 4 and json.loads((tmp_path / "data/shards/classes.json").read_text())[0] == "n01440764"
    out = tmp_path / "job"
    out.mkdir()
    overrides = rehearsal.flagship_overrides(data, out, num_classes=10, checkpoint=None, image_size=32,
                                             finetune_iters=2, final_iters=1)
    status, log, _ = rehearsal.submit_flagship(ray_head, overrides, deadline_s=600, log_path=out / "job.log",
                                               echo=False)
    assert status == 0, log[-6000:]

    report = json.loads((out / "run" / "report.json").read_text())
    assert report["world_size"] == 2 and report["config"]["model.arch"] == "resnet50"
    assert report["config"]["prune.round_to"] == 8 and report["config"]["criterion.name"] == "singe"
    step = report["steps"][0]  # the config's 50% of the MACs in one step: at the target, within one unit
    assert step["macs"] <= step["target"] and step["target"] - step["macs"] < 8 * step["last_unit_cost"]
    assert len(report["peak_memory_mb"]["rss"]) == 2 and min(report["peak_memory_mb"]["rss"]) > 0
    check = rehearsal.check_pruned(out / "run", 2, 32)
    assert check["same_architecture"] and check["max_abs_output_difference"] < 1e-4, check
    assert check["groups_not_multiple_of_8"] == [], check
    run = rehearsal.mlflow_run(out)
    assert run["runs"] == 1 and run["status"] == "FINISHED", run
