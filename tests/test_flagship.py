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
import torch

from singe_dist.config import load_config
from singe_dist.models import build_model

from .ray_head import REPO_ROOT, ray_head  # noqa: F401
from .support import digits_as_fashion_files

FLAGSHIP = REPO_ROOT / "jobs" / "configs" / "resnet50_imagenet.yaml"
SMALLEST_GPU_GIB = 24  # the A10G of cluster/ray-cluster.yaml and cluster/kuberay/*.yaml (g5.12xlarge)


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_flagship_config_runs_through_ray_job_submit(ray_head, tmp_path) -> None:  # noqa: F811
    make_data = _load("imagenet_rehearsal_data").make_data
    rehearsal = _load("imagenet_rehearsal")
    data = make_data(tmp_path / "data", classes=10, train_per_class=4, val_per_class=2, per_shard=10,
                     val_per_shard=10, max_side=48, fashion_dir=digits_as_fashion_files(tmp_path / "garments"))
    assert data["train"]["shards"] == 4 and json.loads((tmp_path / "data/shards/classes.json").read_text())[0] == "n01440764"
    out = tmp_path / "job"
    out.mkdir()
    overrides = rehearsal.flagship_overrides(data, out, num_classes=10, checkpoint=None, image_size=32,
                                             finetune_iters=2, final_iters=1)
    status, log, _ = rehearsal.submit_flagship(ray_head, overrides, deadline_s=600, log_path=out / "job.log",
                                               echo=False)
    assert status == 0, log[-6000:]
    assert log.count("baseline: top-1") == 1, "rank 0's progress lines reach the job's log once"

    report = json.loads((out / "run" / "report.json").read_text())
    assert report["world_size"] == 2 and report["config"]["model.arch"] == "resnet50"
    assert report["config"]["prune.round_to"] == 8 and report["config"]["criterion.name"] == "magnitude"
    step = report["steps"][0]  # the config's 50% of the MACs in one step: at the target, within one unit
    assert step["macs"] <= step["target"] and step["target"] - step["macs"] < 8 * step["last_unit_cost"]
    assert len(report["peak_memory_mb"]["rss"]) == 2 and min(report["peak_memory_mb"]["rss"]) > 0
    check = rehearsal.check_pruned(out / "run", 2, 32)
    assert check["same_architecture"] and check["max_abs_output_difference"] < 1e-4, check
    assert check["groups_not_multiple_of_8"] == [], check
    run = rehearsal.mlflow_run(out)
    assert run["runs"] == 1 and run["status"] == "FINISHED", run


def test_flagship_relevance_chunk_fits_the_smallest_gpu() -> None:
    """criterion.max_rows bounds relevance memory: rows x what one row keeps alive must fit a 24 GB GPU.

    The ImageNet rehearsal measured ~80 MB per row at 224 px (fp32, ResNet-50); the flagship's
    max_rows of 512 meant ~42 GB, past an A10G. The bound here is the sum of every leaf module's
    output for one image (122 MiB at 224 px, above the measured need), from a forward on the meta
    device: no memory, no compute.
    """
    config = load_config(FLAGSHIP)
    model = build_model(config.model.arch, config.model.num_classes).to("meta").eval()
    per_row = [0]

    def count(module, _inputs, output) -> None:  # noqa: ANN001
        if not list(module.children()):
            per_row[0] += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    size = config.data.image_size
    model(torch.empty(1, 3, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    chunk_gib = config.criterion.max_rows * per_row[0] / 2**30
    assert chunk_gib <= SMALLEST_GPU_GIB * 2 / 3, f"max_rows {config.criterion.max_rows}: {chunk_gib:.1f} GiB"
