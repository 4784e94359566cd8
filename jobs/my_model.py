"""An example of bringing your own model: ``model.arch: "jobs.my_model:small_cnn"``.

Any callable that takes ``num_classes`` (keyword) and returns a ``torch.nn.Module`` will do, in a
module importable from the job's working directory (here the repository root, where ``jobs/`` is a
namespace package; on a Ray cluster, the ``--working-dir`` of ``ray job submit``). Checkpoints and
plans record the import path, so ``load_model``, plan replay, ``singe-dist eval`` and ``singe-dist
export`` rebuild the model from this file: keep it importable wherever you load the pruned model.
"""

from __future__ import annotations

from torch import nn


def _conv_bn(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (the second with a residual block), global pooling, a 2-layer head."""

    def __init__(self, num_classes: int, width: int = 24) -> None:
        super().__init__()
        self.stem = _conv_bn(3, width)
        self.down = _conv_bn(width, 2 * width, stride=2)
        self.block = nn.Sequential(_conv_bn(2 * width, 2 * width),
                                   nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width))
        self.relu = nn.ReLU(inplace=True)
        self.last = _conv_bn(2 * width, 4 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, 64), nn.ReLU(inplace=True),
                                  nn.Linear(64, num_classes))

    def forward(self, x):  # noqa: ANN001, ANN201
        x = self.down(self.stem(x))
        x = self.relu(x + self.block(x))
        return self.head(self.pool(self.last(x)))


def small_cnn(num_classes: int) -> nn.Module:
    """The factory ``model.arch`` names."""
    return SmallCNN(num_classes)
