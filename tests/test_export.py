"""ONNX export (singe_dist/export.py, `singe-dist export`): kept only when ONNX Runtime matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from singe_dist.checkpoint import load_model, save_checkpoint
from singe_dist.cli import main
from singe_dist.models import build_model
from singe_dist.plan.decide import Budget, prune_one_shot
from singe_dist.relevance.criteria import CriterionConfig

from .support import DIGITS_SIZE

INPUT = (3, DIGITS_SIZE, DIGITS_SIZE)


@pytest.fixture()
def pruned_checkpoint(tmp_path):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    model = build_model("digits_resnet", 10).eval()
    plan, _ = prune_one_shot(model, "digits_resnet", 10, INPUT, None, CriterionConfig(name="magnitude"),
                             Budget("macs", 0.4))
    path = tmp_path / "pruned.pt"
    save_checkpoint(path, model, "digits_resnet", 10, plan)
    return path


def _error_line(capsys) -> str:  # noqa: ANN001
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("singe-dist export: error: "), err
    return err


def test_export_of_a_pruned_checkpoint_matches_pytorch_through_onnxruntime_at_two_batch_sizes(
        pruned_checkpoint, tmp_path, capsys) -> None:  # noqa: ANN001
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(pruned_checkpoint), "--onnx", str(out)]) == 0
    assert "dynamic batch" in capsys.readouterr().out
    model = load_model(pruned_checkpoint)[0].eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # the batch dimension is symbolic
    for batch in (1, 7):
        x = torch.randn(batch, *INPUT)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "pruned.pt"]  # no temporary left


def test_a_mismatch_through_onnxruntime_leaves_no_file_and_one_line(pruned_checkpoint, tmp_path, capsys,
                                                                      monkeypatch) -> None:  # noqa: ANN001
    import singe_dist.export as export

    real = export.run_onnxruntime
    monkeypatch.setattr(export, "run_onnxruntime", lambda data, x: real(data, x) * 1.01)  # 1% off
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(pruned_checkpoint), "--onnx", str(out)]) == 2
    err = _error_line(capsys)
    assert "ONNX Runtime differs from PyTorch at batch 1" in err and "not written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned.pt"]
    out.write_bytes(b"previous")  # an existing file is left as it was
    assert main(["export", "--checkpoint", str(pruned_checkpoint), "--onnx", str(out)]) == 2
    _error_line(capsys)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "pruned.pt"]


def test_bad_checkpoints_and_a_missing_input_size_are_one_line(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--onnx", str(out)]) == 2
    assert "nope.pt does not exist" in _error_line(capsys)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert main(["export", "--checkpoint", str(tmp_path / "junk.pt"), "--onnx", str(out)]) == 2
    assert "is not a PyTorch checkpoint" in _error_line(capsys)
    save_checkpoint(tmp_path / "base.pt", build_model("digits_resnet", 10), "digits_resnet", 10)  # no plan
    assert main(["export", "--checkpoint", str(tmp_path / "base.pt"), "--onnx", str(out)]) == 2
    assert "give --image-size" in _error_line(capsys)
    assert not out.exists()
    assert main(["export", "--checkpoint", str(tmp_path / "base.pt"), "--onnx", str(out), "--image-size", "16"]) == 0
    assert out.is_file()
