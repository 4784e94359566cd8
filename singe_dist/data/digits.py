"""The scikit-learn 8x8 digits, upsampled to RGB images: the embedded default's real data set.

It ships inside the scikit-learn wheel, so the demo and the tests need no download. The split is
fixed (seeded, stratified) so every run and every worker sees the same train and validation sets.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
VAL_FRACTION = 0.2
SPLIT_SEED = 0
# mean / std of the upsampled digits (pixel values in [0, 1]), for normalisation
MEAN = (0.305,) * 3
STD = (0.324,) * 3


def digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 (N, 8, 8), labels), "val": (...)}`` with a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(
        images, labels, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=labels
    )
    return {"train": (x_tr, y_tr), "val": (x_va, y_va)}


def upsample_rgb(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, 8, 8) -> float (N, 3, size, size) in [0, 1], bilinear, grey replicated to RGB."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous()


def digits_tensors(split: str, size: int = 32, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """In-memory tensors of one split, ready for a model (``normalize`` with :data:`MEAN`/:data:`STD`)."""
    images, labels = digits_split()[split]
    x = upsample_rgb(images, size)
    if normalize:
        x = (x - MEAN[0]) / STD[0]
    return x, torch.from_numpy(labels)
