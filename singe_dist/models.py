"""Model zoo access: build classifiers by name, never download weights.

Users bring torchvision classifiers (ResNet, MobileNet, VGG, ...); we build them by name with the
right ``num_classes`` and never download weights (no hub access on clusters behind firewalls, and
none here). ``digits_resnet`` is a small residual network for the bundled digits data: it has the
same structural features as ResNet (residual groups, downsample shortcuts, a linear classifier),
but trains in seconds on a CPU.

Checkpoints (architecture name + plan + state dict) live in :mod:`singe_dist.checkpoint`.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from singe_dist.errors import SingeError


class DigitsResNet(nn.Module):
    """A 3-stage residual network for small images (8x8 digits upsampled to 16..64 px)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        blocks: list[nn.Module] = []
        in_ch = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or in_ch != width:
                downsample = nn.Sequential(
                    nn.Conv2d(in_ch, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
                )
            blocks.append(BasicBlock(in_ch, width, stride=stride, downsample=downsample))
            in_ch = width
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


_LOCAL_MODELS = {"digits_resnet": DigitsResNet}


def available_models() -> list[str]:
    """Every architecture name :func:`build_model` accepts."""
    return sorted(set(_LOCAL_MODELS) | set(torchvision.models.list_models(module=torchvision.models)))


def build_model(name: str, num_classes: int = 1000) -> nn.Module:
    """Build an untrained classifier by name (torchvision names or ``digits_resnet``)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise SingeError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if name in _LOCAL_MODELS:
        return _LOCAL_MODELS[name](num_classes=num_classes)
    if name not in torchvision.models.list_models(module=torchvision.models):
        close = [m for m in available_models() if name.split("_")[0] in m][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SingeError(f"unknown model name {name!r}{hint}; see `singe-dist models` for the list")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
