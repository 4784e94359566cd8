"""Model zoo access and safe checkpoints.

Users bring torchvision classifiers (ResNet, MobileNet, VGG, ...); we build them by name with the
right ``num_classes`` and never download weights (no hub access on clusters behind firewalls, and
none here). ``digits_resnet`` is a small residual network for the bundled digits data: it has the
same structural features as ResNet (residual groups, downsample shortcuts, a linear classifier),
but trains in seconds on a CPU.

A checkpoint is ``{"arch", "num_classes", "plan", "state_dict"}``: the architecture is rebuilt
from its name and the plan replayed, so a checkpoint never contains pickled code and is loaded
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from singe_dist.errors import SingeError

CHECKPOINT_FORMAT = "singe-dist/checkpoint/v1"


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


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path`` and rename it into place.

    A crash or a full disk mid-write leaves the previous file intact instead of a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning missing, unexpected or mis-shaped keys into one clear line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (first: {unexpected[0]})")
        raise SingeError(f"checkpoint {source} does not match the model: {'; '.join(parts)}")
    for key, tensor in own.items():
        got = state_dict[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(tensor.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise SingeError(
                f"checkpoint {source} does not match the model: {key} has shape {shape}, "
                f"model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(state_dict)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``) and check its layout.

    Accepts our own format and, for convenience, a bare state dict (as torchvision or a user's
    training script would save it).
    """
    path = Path(path)
    if not path.is_file():
        raise SingeError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad input file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SingeError(f"checkpoint {path} cannot be loaded safely: {reason}") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": CHECKPOINT_FORMAT, "arch": None, "num_classes": None, "plan": None,
                "state_dict": obj}
    raise SingeError(f"checkpoint {path} is neither a singe-dist checkpoint nor a state dict")
