"""The command line and the demo, run as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from singe_dist.checkpoint import load_model, save_checkpoint
from singe_dist.demo import DemoConfig, run_demo
from singe_dist.plan.cost import measure
from singe_dist.plan.plan import Plan


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "singe_dist.cli", *args], capture_output=True, text=True, timeout=300)


def test_relevance_command_writes_scores_per_group_with_module_names(trained_digits_model, tmp_path) -> None:
    save_checkpoint(tmp_path / "base.pt", trained_digits_model, "digits_resnet", 10)
    out = tmp_path / "scores.json"
    proc = _cli("relevance", "--checkpoint", str(tmp_path / "base.pt"), "--image-size", "16", "--samples", "64",
                "--steps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["model"] == "digits_resnet" and data["samples"] == 64
    groups = data["groups"]
    assert "layers.0.conv1" in groups and "fc" not in groups
    for gid, g in groups.items():
        assert len(g["scores"]) == g["channels"] > 0
        assert gid in g["members"]
        assert all(isinstance(v, float) for v in g["scores"])
    # residual stream: one group spans the stem and every block of the first stage
    stem = groups["conv1"]
    assert {"conv1", "bn1", "layers.0.conv1", "layers.0.conv2"} <= set(stem["members"]) | set(stem["consumers"])


def test_demo_trains_prunes_half_the_macs_and_writes_a_loadable_model(tmp_path) -> None:
    lines: list[str] = []
    rows = run_demo(tmp_path, DemoConfig(image_size=16, train_steps=120, finetune_steps=60), log=lines.append)
    base, final = rows["baseline"], rows["pruned + fine-tuned"]
    assert base["top1"] > 0.9
    assert 0.45 <= final["macs"] / base["macs"] <= 0.5
    assert final["top1"] > rows["pruned (no fine-tune)"]["top1"]
    assert "| baseline" in lines[-1] and "MACs kept" in lines[-1]
    model, arch, _, plan = load_model(tmp_path / "pruned.pt")
    assert plan == Plan.load(tmp_path / "plan.json")
    assert measure(model, (3, 16, 16)).macs == final["macs"]
    x = torch.randn(2, 3, 16, 16)
    assert model.eval()(x).shape == (2, 10)
