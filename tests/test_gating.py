"""Property 1: the gated network at mu = 0 is exactly the structurally pruned network."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from singe_dist.plan.plan import apply_step
from singe_dist.relevance.groups import Gates, example_input, find_groups


def _realistic_batchnorm(model: torch.nn.Module, size: int) -> None:
    """Non-trivial BN affine parameters and running statistics estimated on data.

    Random statistics make deep untrained nets collapse to a constant output, where any removal
    looks "exact"; estimated statistics keep every layer's signal alive.
    """
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
            m.momentum = None  # cumulative average over the calibration passes
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size, generator=gen))
    model.eval()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2", "vgg11_bn", "digits_resnet", "cifar_resnet20"])
def test_gate_at_zero_equals_structural_removal(arch: str) -> None:
    torch.manual_seed(0)
    from singe_dist.models import build_model

    size = {"digits_resnet": 16, "cifar_resnet20": 28}.get(arch, 64)
    model = build_model(arch, 10)
    _realistic_batchnorm(model, size)
    x = torch.randn(3, 3, size, size)
    groups = find_groups(model, example_input(model, (3, size, size)))
    gates = Gates(groups)
    with torch.no_grad():
        full = model(x)
    picked = groups[:: max(1, len(groups) // 5)][:5]
    assert len(picked) >= 3
    changed = 0
    for group in picked:
        channels = list(range(0, group.size, 2))  # half the group: a clearly visible change
        gate = torch.ones(len(x), group.size)
        gate[:, channels] = 0.0
        with torch.no_grad(), gates.active({group.id: gate}):
            gated = model(x)
        pruned = copy.deepcopy(model)
        apply_step(pruned, {group.id: channels}, (3, size, size))
        with torch.no_grad():
            removed = pruned(x)
        rel = ((gated - removed).norm() / removed.norm()).item()
        assert rel < 1e-5, f"{arch} group {group.id}: gated vs removed differ by {rel:.2e}"
        changed += int(((full - removed).norm() / full.norm()).item() > 1e-3)
    # removal must actually change the outputs for the comparison to mean something
    assert changed >= len(picked) - 1


def test_gates_are_per_sample_and_removed_after_use() -> None:
    from singe_dist.models import build_model

    model = build_model("digits_resnet", 10).eval()
    x = torch.randn(2, 3, 16, 16)
    group = find_groups(model, example_input(model, (3, 16, 16)))[0]
    gates = Gates([group])
    gate = torch.ones(2, group.size)
    gate[1, :] = 0.0  # only the second sample loses the group
    with torch.no_grad():
        ref = model(x)
        with gates.active({group.id: gate}):
            out = model(x)
        after = model(x)
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    assert not torch.allclose(out[1], ref[1], atol=1e-4)
    assert torch.equal(after, ref)  # hooks are gone


def test_vgg_flatten_consumer_maps_each_channel_to_its_spatial_columns() -> None:
    model = torchvision.models.vgg11_bn(num_classes=10).eval()
    groups = find_groups(model, example_input(model, (3, 32, 32)))
    last = next(g for g in groups if g.id == "features.25")
    fc = next(m for m in last.consumers if m.name == "classifier.0")
    assert len(fc.idxs) == last.size * 49  # 7x7 positions after the adaptive average pool
    assert torch.equal(torch.bincount(fc.root_idxs), torch.full((last.size,), 49))
