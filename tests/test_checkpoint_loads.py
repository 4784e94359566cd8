"""Job checkpoints are validated before a resume: one line for each way one can be wrong or hostile.

(docs/RELIABILITY.md, bad input.)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from singe_dist.checkpoint import load_model
from singe_dist.engine.loop import PruneJob
from singe_dist.engine.run_dir import CHECKPOINT_NAME
from singe_dist.errors import SingeError

from .support import fast_job_config


def _resume_error(shards, baseline, run_dir: Path, **extra) -> str:  # noqa: ANN001
    with pytest.raises(SingeError) as err:
        PruneJob(fast_job_config(shards, baseline, run_dir, **extra), resume=True, log=lambda _m: None).run()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_whose_plan_does_not_fit_its_weights_is_refused(
        digits_shards, digits_baseline, reference, tmp_path) -> None:
    for name in ("pruned.pt", CHECKPOINT_NAME):
        ckpt = torch.load(reference / name, weights_only=True)
        ckpt["plan"]["steps"] = ckpt["plan"]["steps"][:1]  # the weights are those of two steps
        (tmp_path / name).parent.mkdir(exist_ok=True)
        torch.save(ckpt, tmp_path / name)
    with pytest.raises(SingeError) as err:
        load_model(tmp_path / "pruned.pt")
    assert re.fullmatch(rf"checkpoint {tmp_path / 'pruned.pt'} does not match the model: \S+ has shape "
                        r"\([\d, ]+\), model expects \([\d, ]+\)", str(err.value)), str(err.value)
    message = _resume_error(digits_shards, digits_baseline, tmp_path)
    assert message.startswith(f"checkpoint {tmp_path / CHECKPOINT_NAME} does not match the model: ")


def test_resume_refuses_checkpoints_that_are_not_its_own(digits_shards, digits_baseline, reference, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy2(reference / "pruned.pt", run_dir / CHECKPOINT_NAME)  # a model, not a job checkpoint
    assert _resume_error(digits_shards, digits_baseline, run_dir) == (
        f"checkpoint {run_dir / CHECKPOINT_NAME} cannot be resumed: it is not a pruning-job checkpoint (no "
        "'position'); pass it as model.checkpoint to start a new run instead")

    shutil.copy2(reference / CHECKPOINT_NAME, run_dir / CHECKPOINT_NAME)
    assert _resume_error(digits_shards, digits_baseline, run_dir, model__arch="resnet18") == (
        f"checkpoint {run_dir / CHECKPOINT_NAME} is for model 'digits_resnet' with 10 classes, the config for "
        "'resnet18' with 10: resume with the run's own config")
    assert _resume_error(digits_shards, digits_baseline, run_dir, prune__steps=1) == (
        f"checkpoint {run_dir / CHECKPOINT_NAME} is at step 2, beyond prune.steps=1: resume with the run's own config")

    data = (reference / CHECKPOINT_NAME).read_bytes()
    (run_dir / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])  # what a non-atomic write would leave
    assert _resume_error(digits_shards, digits_baseline, run_dir).startswith(
        f"checkpoint {run_dir / CHECKPOINT_NAME} cannot be loaded safely: PytorchStreamReader failed reading zip "
        "archive: failed finding central directory")


def test_a_checkpoint_that_would_run_code_is_refused_on_resume_and_the_code_never_runs(
        digits_shards, digits_baseline, tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.makedirs, (str(marker),))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"format": "singe-dist/checkpoint/v1", "plan": Evil()}, run_dir / CHECKPOINT_NAME)
    assert _resume_error(digits_shards, digits_baseline, run_dir) == (
        f"checkpoint {run_dir / CHECKPOINT_NAME} cannot be loaded safely: it refers to os.makedirs, which is not a "
        "tensor or a plain container; weights_only=True refused it before anything in the file was run")
    assert not marker.exists()
