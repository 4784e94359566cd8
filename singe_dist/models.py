"""Model zoo access: build classifiers by name, never download weights.

Users bring torchvision classifiers (ResNet, MobileNet, VGG, ...); we build them by name with the
right ``num_classes`` and never download weights (no hub access on clusters behind firewalls, and
none here). ``digits_resnet`` is a small residual network for the bundled digits data: it has the
same structural features as ResNet (residual groups, downsample shortcuts, a linear classifier),
but trains in seconds on a CPU. ``cifar_resnet20/32/56`` are the field's small benchmark models
(He et al. 2016; Torch-Pruning's CIFAR-10 table prunes ResNet-56), used on Fashion-MNIST here.

A user's own model is named by an import path, ``"package.module:factory"``: a callable taking
``num_classes`` (keyword) and returning an ``nn.Module``, importable from the job's working directory
(which is put on ``sys.path``; on Ray workers that is the job's ``--working-dir``). The name is what
checkpoints and plans record, so loading and plan replay rebuild it the same way. :func:`build_model`
is the one place that builds a model by name.

Checkpoints (architecture name + plan + state dict) live in :mod:`singe_dist.checkpoint`.
"""

from __future__ import annotations


import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from singe_dist.errors import SingeError
from singe_dist.import_spec import is_import_spec, load_import_spec, where


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


class CifarResNet(nn.Module):
    """The CIFAR ResNets of He et al. 2016 (section 4.2): 6n + 2 layers, three stages of 16/32/64 channels.

    A 3x3 stem, then n basic blocks per stage (stride 2 at the start of stages 2 and 3), global
    average pooling and a linear classifier. Shortcuts that change shape are 1x1 convolutions with
    BatchNorm (option B), as in Torch-Pruning's CIFAR benchmarks, so the residual streams are
    prunable groups. ResNet-20/32/56 have n = 3/5/9 (0.27M/0.46M/0.85M parameters at 10 classes).
    """

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise SingeError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        in_ch, stages = 16, []
        for i, width in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                downsample = None
                if stride != 1 or in_ch != width:
                    downsample = nn.Sequential(nn.Conv2d(in_ch, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
                blocks.append(BasicBlock(in_ch, width, stride=stride, downsample=downsample))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_LOCAL_MODELS = {
    "digits_resnet": DigitsResNet,
    "cifar_resnet20": lambda num_classes=10: CifarResNet(20, num_classes),
    "cifar_resnet32": lambda num_classes=10: CifarResNet(32, num_classes),
    "cifar_resnet56": lambda num_classes=10: CifarResNet(56, num_classes),
}


def available_models() -> list[str]:
    """Every architecture name :func:`build_model` accepts."""
    return sorted(set(_LOCAL_MODELS) | set(torchvision.models.list_models(module=torchvision.models)))


def build_model(name: str, num_classes: int = 1000) -> nn.Module:
    """Build an untrained classifier by name (torchvision names, ``digits_resnet``, ``cifar_resnet20/32/56``)
    or by import path (``"package.module:factory"``, see the module docstring)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise SingeError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if is_import_spec(name):
        return _build_from_import_path(name, num_classes)
    if name in _LOCAL_MODELS:
        return _LOCAL_MODELS[name](num_classes=num_classes)
    if name not in torchvision.models.list_models(module=torchvision.models):
        close = [m for m in available_models() if name.split("_")[0] in m][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SingeError(f"unknown model name {name!r}{hint}; see `singe-dist models` for the list, or give your "
                         "own as 'package.module:factory'")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _build_from_import_path(spec: str, num_classes: int) -> nn.Module:
    """Import the user's factory (:func:`~singe_dist.import_spec.load_import_spec`) and call it."""
    factory = load_import_spec(spec, "model")
    attr = spec.partition(":")[2]
    if not callable(factory):
        raise SingeError(f"model {spec!r}: {attr} is not callable (type {type(factory).__name__})")
    try:
        model = factory(num_classes=num_classes)
    except Exception as exc:  # noqa: BLE001 - the user's code: say where it failed, in one line
        raise SingeError(f"model {spec!r}: {attr}(num_classes={num_classes}) raised {where(exc, __file__)}") from None
    if not isinstance(model, nn.Module):
        raise SingeError(f"model {spec!r}: {attr}(num_classes={num_classes}) returned a {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model
