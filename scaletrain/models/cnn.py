"""Small plain-PyTorch classifiers for digits / MNIST-size images."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import register_model
from .dropblock import DropBlock2d


class Normalize(nn.Module):
    """(x - mean) / std per channel, as buffers, so attacks can work in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int):
        super().__init__()
        mean = list(mean) * channels if len(mean) == 1 else list(mean)
        std = list(std) * channels if len(std) == 1 else list(std)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks (conv-BN-ReLU) + max-pool + a linear head.

    Sized for 8x8 digits and 28x28 MNIST alike (adaptive pooling before the head).
    """

    def __init__(self, num_classes=10, in_channels=1, image_size=8, width=32, mean=(0.0,), std=(1.0,),
                 batchnorm: bool = True, hidden: int = 128, dropblock_prob: float = 0.0, dropblock_size: int = 3):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.normalize = Normalize(mean, std, in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), norm(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        if dropblock_prob > 0:  # after the last conv block (Ghiasi et al. 2018); parameter names unchanged
            self.features.insert(6, DropBlock2d(dropblock_prob, dropblock_size))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(self.normalize(x)))


class MLP(nn.Module):
    def __init__(self, num_classes=10, in_channels=1, image_size=8, width=256, mean=(0.0,), std=(1.0,),
                 depth: int = 2):
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        layers, d = [nn.Flatten()], in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(self.normalize(x))


class WideMLP(MLP):
    """An MLP of ~20M parameters (for ZeRO memory measurements): width 4096, depth 2 by default."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=4096, mean=(0.0,), std=(1.0,),
                 depth: int = 2):
        super().__init__(num_classes, in_channels, image_size, width, mean, std, depth)


register_model("digits_cnn")(DigitsCNN)
register_model("mlp")(MLP)
register_model("wide_mlp")(WideMLP)
