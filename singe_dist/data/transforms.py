"""Image transforms for the shard reader: the standard ImageNet recipe, sizes and statistics configurable.

Training: RandomResizedCrop + horizontal flip, the augmentation every torchvision ImageNet
reference model was trained with, so fine-tuning after pruning sees the distribution the model knows.
Evaluation: resize the short side then center crop (256 -> 224 by default), the protocol published
accuracies are measured with, so our numbers compare with them. Both take a PIL RGB image (what the
reader decodes) and return a normalised float tensor (3, size, size). The digits data set has its own
statistics in :mod:`singe_dist.data.digits` (``MEAN``, ``STD``); pass them as ``mean`` / ``std``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the evaluation resize is this much larger than the crop (ImageNet's 256 / 224)
RESIZE_RATIO = 256 / 224

Transform = Callable[[Image.Image], torch.Tensor]


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
    steps: list[Callable] = [T.RandomResizedCrop(size, scale=scale)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def eval_transform(
    size: int = 224,
    resize_size: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Transform:
    """Resize(resize_size) + CenterCrop(size) + ToTensor + Normalize; ``resize_size`` defaults to size * 256 / 224."""
    resize_size = round(size * RESIZE_RATIO) if resize_size is None else resize_size
    return T.Compose([T.Resize(resize_size), T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])
