"""Shared fixtures: a small model trained on the real digits data, built once per test session."""

from __future__ import annotations

import copy
import os

# One intra-op thread for the tests and every process they start (Ray workers, CLI runs): the models
# are small, and on the 2-vCPU CI machine OpenMP's spin-waiting makes 2 threads 3-7x slower than 1
# (measured: a ResNet-18 training step at 32 px takes 3.3 s with 2 threads, 0.48 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from singe_dist.data.digits import digits_tensors
from singe_dist.engine.train import make_optimizer, tensor_batches, train_steps
from singe_dist.models import build_model

DIGITS_SIZE = 16


@pytest.fixture(scope="session")
def digits_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {split: digits_tensors(split, DIGITS_SIZE) for split in ("train", "val")}


@pytest.fixture(scope="session")
def _trained_digits_model(digits_data) -> torch.nn.Module:  # noqa: ANN001
    torch.manual_seed(0)
    model = build_model("digits_resnet", 10)
    x, y = digits_data["train"]
    train_steps(model, make_optimizer(model, 0.1), tensor_batches(x, y, 64, shuffle=True, repeat=True), 150, 0.1)
    return model.eval()


@pytest.fixture()
def trained_digits_model(_trained_digits_model) -> torch.nn.Module:  # noqa: ANN001
    """A fresh copy per test, so tests that prune it do not affect each other."""
    return copy.deepcopy(_trained_digits_model)


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> dict[str, str]:  # noqa: ANN001
    """The digits as real JPEG webdataset shards (16 px): ``{"train": pattern, "val": pattern}``."""
    from singe_dist.data.convert import digits_to_shards

    written = digits_to_shards(tmp_path_factory.mktemp("digits-shards"), size=DIGITS_SIZE, per_shard=500)
    return {split: s.pattern for split, s in written.items()}


@pytest.fixture(scope="session")
def digits_baseline(tmp_path_factory, _trained_digits_model) -> str:  # noqa: ANN001
    """The trained digits model as a singe-dist checkpoint file."""
    from singe_dist.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("baseline") / "baseline.pt"
    save_checkpoint(path, _trained_digits_model, "digits_resnet", 10)
    return str(path)


def small_job_overrides(shards: dict[str, str], baseline: str | None, out_dir, **extra: object) -> list[str]:  # noqa: ANN001
    """Overrides of jobs/configs/demo.yaml for a job of a few seconds on 16 px digits shards."""
    values = {
        "data.train": shards["train"], "data.val": shards["val"], "data.image_size": DIGITS_SIZE,
        "data.resize_size": DIGITS_SIZE, "data.batch_size": 32, "data.train_samples": 1437,
        "model.checkpoint": baseline or "null", "run.out_dir": str(out_dir), "prune.steps": 2,
        "finetune.iters_per_step": 8, "finetune.final_iters": 8, "criterion.calibration_batches": 1,
        "criterion.steps": 2, "tracking.enabled": "false", "distributed.num_workers": 0,
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]
