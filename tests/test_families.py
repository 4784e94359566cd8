"""Every torchvision classification family: pruned correctly, or refused in one line, in seconds.

For each family (its smallest member, random weights, small inputs) either the removal path is
verified (gate-at-0 equals removal on sampled groups) and a SInGE one-shot prune of 30% of the MACs
gives a working smaller model whose checkpoint reloads by plan replay to the same outputs, or the
model is refused up front with one line naming what is unsupported. Groups through grouped
convolutions (ResNeXt, RegNet X), LayerNorm, attention or parameters outside layers (ConvNeXt, ViT)
are left out, so those models prune the other groups (ConvNeXt and ViT: their MLP widths); the
self-check catches a left-out group if it were let through. ViT runs as a small instance of
torchvision's ``VisionTransformer`` (ViT-B needs 224 px), built through the user-model path.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from singe_dist.checkpoint import load_model, save_checkpoint
from singe_dist.errors import SingeError
from singe_dist.plan.cost import measure
from singe_dist.plan.decide import Budget, prune_one_shot
from singe_dist.plan.removal_check import check_removal
from singe_dist.relevance import groups as groups_module
from singe_dist.relevance.criteria import CriterionConfig
from singe_dist.relevance.groups import example_input, find_groups

SUPPORTED = ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "vgg11_bn", "densenet121", "mobilenet_v2",
             "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf",
             "mnasnet0_5", "squeezenet1_1", "googlenet", "inception_v3", "alexnet", "convnext_tiny",
             "tests.test_families:small_vit"]
REFUSED = {  # model -> what its one line must name
    "shufflenet_v2_x0_5": "cannot trace the channel dependencies of ShuffleNetV2",
    "swin_t": "(ShiftedWindowAttention) is window attention",
    "maxvit_t": "(RelativePositionalMultiHeadAttention) is window attention",
}


def small_vit(num_classes: int) -> nn.Module:
    """torchvision's VisionTransformer at 32 px: 2 layers, 2 heads, width 64, MLP 128."""
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
                             num_classes=num_classes)
SIZE = {"inception_v3": 80, "alexnet": 64}  # their stems need at least 75 and 63 px; the others run at 32


def _build(name: str) -> nn.Module:
    from singe_dist.models import build_model

    torch.manual_seed(0)
    return build_model(name, 10).eval()


@pytest.mark.parametrize("name", SUPPORTED)
def test_a_supported_family_prunes_to_a_smaller_model_that_reloads_by_plan_replay(name: str, tmp_path) -> None:
    size = (3, SIZE.get(name, 32), SIZE.get(name, 32))
    model = _build(name)
    x, y = torch.randn(2, *size), torch.tensor([1, 7])
    check_removal(model, find_groups(model, example_input(model, size)), x, size)  # raises if the path is wrong
    before = measure(model, size)
    cheap = CriterionConfig(name="singe", steps=1, prefix_reuse=False)  # one path point, one image: the suite's time budget
    plan, selection = prune_one_shot(model, name, 10, size, [(x[:1], y[:1])], cheap, Budget("macs", 0.3))
    after = measure(model, size)
    assert after.macs < before.macs and after.params < before.params
    if selection.reached:
        assert after.macs <= 0.7 * before.macs
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    save_checkpoint(tmp_path / "pruned.pt", model, name, 10, plan)
    reloaded, arch, _, replayed = load_model(tmp_path / "pruned.pt")
    assert arch == name and replayed == plan
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_an_unsupported_family_is_refused_in_one_line_before_tracing(name: str) -> None:
    model = _build(name)
    with pytest.raises(SingeError) as info:
        find_groups(model, example_input(model, (3, 224, 224)))  # ViT and Swin need 224 px to run at all
    message = str(info.value)
    assert "\n" not in message and message.startswith("model not supported: ") and REFUSED[name] in message


class _Grouped(nn.Module):
    """A stem, a grouped (non-depthwise) 3x3 convolution, a dense 1x1 and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.grouped(self.stem(x))))


def test_groups_through_a_grouped_convolution_are_left_out_and_the_self_check_would_catch_them(
        monkeypatch, caplog) -> None:
    size = (3, 16, 16)
    model = _Grouped().eval()
    x = torch.randn(4, *size)
    monkeypatch.setattr(groups_module, "_ALREADY_WARNED", set())  # whatever earlier tests warned about
    with caplog.at_level(logging.WARNING, logger="singe_dist.relevance.groups"):
        kept = find_groups(model, example_input(model, size))
    assert [g.id for g in kept] == ["mix.0"]  # the stem's and the grouped conv's channels pass through it
    assert "2 channel group(s) left unpruned" in caplog.text and "groups=4" in caplog.text
    caplog.clear()  # a job finds the groups again at every step: the warning is not repeated
    with caplog.at_level(logging.WARNING, logger="singe_dist.relevance.groups"):
        assert [g.id for g in find_groups(model, example_input(model, size))] == ["mix.0"]
    assert "left unpruned" not in caplog.text
    check_removal(model, kept, x, size)
    # let the grouped convolution's groups through: gating is then not the removal, and the check says where
    monkeypatch.setattr(groups_module, "_is_grouped", lambda _module: False)
    every = find_groups(model, example_input(model, size))
    assert len(every) == 3
    with pytest.raises(SingeError, match=r"removal self-check failed on group '(stem|grouped)\.0' \(layers: .*"
                                         r"Conv2d\(groups=4\).*\): gating \d+ of its 16 channels to 0 differs"):
        check_removal(model, every, x, size)


def test_the_self_check_compares_in_exact_float32_and_restores_the_precision_flags() -> None:
    """On a GPU, cuDNN convolutions default to TF32; its rounding failed the check on an H200 (1.9e-4) for
    a model that is supported. The check turns TF32 off for its forwards and restores the user's flags."""
    seen: list[tuple[bool, bool]] = []

    class _Recording(_Grouped):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return super().forward(x)

    size = (3, 16, 16)
    model = _Recording().eval()
    kept = find_groups(model, example_input(model, size))
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        seen.clear()
        check_removal(model, kept, torch.randn(4, *size), size)
        assert seen and all(flags == (False, False) for flags in seen)  # every forward of the check, gated and removed
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class _ListInput(nn.Module):
    """A DenseNet-style layer whose forward takes a *list* of tensors (torchvision's ``_DenseLayer``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(torch.cat(features, 1))


class _Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.side = nn.Conv2d(3, 8, 3, padding=1)
        self.layer = _ListInput()
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)  # read again after the layer (dense connectivity): expanding at layer.conv fails
        return self.head(torch.cat([self.layer([stem, self.side(x)]), stem], 1))


def test_prefix_reuse_skips_a_module_whose_input_is_a_list_and_keeps_the_plain_relevance() -> None:
    from singe_dist.relevance.criteria import compute_relevance

    torch.manual_seed(0)
    model, size = _Dense().eval(), (3, 8, 8)
    groups = find_groups(model, example_input(model, size))
    batch = [(torch.randn(6, *size), torch.randint(0, 10, (6,)))]
    reused = compute_relevance(model, groups, batch, CriterionConfig(name="singe", path="channel", steps=2))
    plain = compute_relevance(model, groups, batch, CriterionConfig(name="singe", path="channel", steps=2, prefix_reuse=False))
    for gid in plain:
        torch.testing.assert_close(reused[gid], plain[gid], rtol=1e-6, atol=1e-9)


def test_measured_macs_of_a_vit_count_attention_by_hand() -> None:
    """nn.MultiheadAttention calls its projections functionally: its MACs are counted by hand, not missed."""
    tokens, width, mlp = (32 // 8) ** 2 + 1, 64, 128
    patches = 16 * width * 3 * 8 * 8
    attention = 4 * tokens * width * width + 2 * tokens * tokens * width  # q, k, v, out projections; QK^T, AV
    layer = attention + 2 * tokens * width * mlp
    assert measure(small_vit(10), (3, 32, 32)).macs == patches + 2 * layer + width * 10
