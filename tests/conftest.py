"""Shared fixtures: a small model trained on the real digits data, built once per test session."""

from __future__ import annotations

import copy

import pytest
import torch

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
