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

from .support import DIGITS_SIZE, fast_job_config


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


@pytest.fixture(scope="session")
def reference(digits_shards, digits_baseline, tmp_path_factory):  # noqa: ANN001, ANN201
    """The uninterrupted fast small job that every interrupted one must reproduce (its run directory)."""
    from singe_dist.engine.loop import PruneJob

    out = tmp_path_factory.mktemp("reference") / "run"
    PruneJob(fast_job_config(digits_shards, digits_baseline, out), log=lambda _m: None).run()
    return out
