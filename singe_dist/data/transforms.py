"""Image transforms for the shard reader: the standard ImageNet recipe, sizes and statistics configurable.

Training: RandomResizedCrop + horizontal flip, the augmentation every torchvision ImageNet
reference model was trained with, so fine-tuning after pruning sees the distribution the model knows.
Evaluation: resize the short side then center crop (256 -> 224 by default), the protocol published
accuracies are measured with, so our numbers compare with them. Both take a uint8 image tensor
(3, H, W) (what the shard reader decodes) or a PIL image, and return a normalised float tensor
(3, size, size). The digits data set has its own statistics in :mod:`singe_dist.data.digits`
(``MEAN``, ``STD``); pass them as ``mean`` / ``std``.

They are torchvision's ``transforms.v2`` on tensors: the antialiased resize of a uint8 tensor costs
about half of PIL's on the same image (0.85 against 1.64 ms for a 500x375 RandomResizedCrop to 224,
one core) and differs from it by at most one grey level; docs/BENCHMARKS.md has the throughput.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the evaluation resize is this much larger than the crop (ImageNet's 256 / 224)
RESIZE_RATIO = 256 / 224

Transform = Callable[[torch.Tensor | Image.Image], torch.Tensor]


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
) -> Transform:
    """RandomResizedCrop(size, scale) + RandomHorizontalFlip + ToTensor + Normalize.

    ``hflip=False`` is for data whose meaning is not mirror-symmetric (digits, text).
    """
    steps: list[Callable] = [v2.ToImage(), v2.RandomResizedCrop(size, scale=scale, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_float(mean, std))


def eval_transform(
    size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Transform:
    """Resize(resize_size) + CenterCrop(size) + ToTensor + Normalize; ``resize_size`` defaults to size * 256 / 224."""
    resize_size = round(size * RESIZE_RATIO) if resize_size is None else resize_size
    return v2.Compose([v2.ToImage(), v2.Resize(resize_size, antialias=True), v2.CenterCrop(size),
                       *_to_float(mean, std)])
