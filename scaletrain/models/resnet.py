"""Residual networks for CIFAR-size inputs (32x32; any side >= 8 works through global pooling).

- `preact_resnet18`: He et al., "Identity mappings in deep residual networks" (ECCV 2016), the
  CIFAR variant used by Rice, Wong & Kolter (2020): 3x3 stem of `width` (64) channels, four
  stages of two pre-activation basic blocks (64, 128, 256, 512 x width/64), BN-ReLU, global
  average pool, linear. 11,172,170 parameters at 10 classes (11.17M; the final BN adds 1,024
  to the 11,171,146 often quoted for the variant without it).
- `wrn_28_10`, `wrn_34_10`, `wide_resnet`: Zagoruyko & Komodakis, "Wide residual networks"
  (BMVC 2016): 3x3 stem of 16 channels, three groups of (depth-4)/6 pre-activation basic blocks
  of 16k, 32k, 64k channels (k = `width`, the widening factor), BN-ReLU, pool, linear.
  WRN-28-10: 36,479,194 parameters; WRN-34-10: 46,160,474.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from . import register_model
from .common import ZooModel


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut (1x1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        short = self.shortcut(o) if self.shortcut is not None else x
        o = F.relu(self.bn2(self.conv1(o)))
        if self.dropout:
            o = F.dropout(o, self.dropout, self.training)
        return self.conv2(o) + short


class _ResNet(ZooModel):
    min_image_size = 8

    def _stage(self, cin: int, cout: int, blocks: int, stride: int, dropout: float = 0.0):
        layers = [PreActBlock(cin, cout, stride, dropout)]
        layers += [PreActBlock(cout, cout, 1, dropout) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _head(self, c: int, num_classes: int):
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # He init for convolutions (both papers)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        o = self.stages(self.stem(self.normalize(x)))
        o = F.adaptive_avg_pool2d(F.relu(self.bn(o)), 1).flatten(1)
        return self.fc(o)


@register_model("preact_resnet18")
class PreActResNet18(_ResNet):
    def __init__(self, num_classes=10, in_channels=3, image_size=32, width=64, mean=(0.0,), std=(1.0,)):
        super().__init__(in_channels, image_size, mean, std)
        w = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.stages = nn.Sequential(self._stage(w[0], w[0], 2, 1), self._stage(w[0], w[1], 2, 2),
                                    self._stage(w[1], w[2], 2, 2), self._stage(w[2], w[3], 2, 2))
        self._head(w[3], num_classes)


@register_model("wide_resnet")
class WideResNet(_ResNet):
    def __init__(self, num_classes=10, in_channels=3, image_size=32, width=10, mean=(0.0,), std=(1.0,),
                 depth: int = 28, dropout: float = 0.0):
        super().__init__(in_channels, image_size, mean, std)
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 (e.g. 28, 34), got {depth}")
        n, w = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.stages = nn.Sequential(self._stage(w[0], w[1], n, 1, dropout), self._stage(w[1], w[2], n, 2, dropout),
                                    self._stage(w[2], w[3], n, 2, dropout))
        self._head(w[3], num_classes)


@register_model("wrn_28_10")
def wrn_28_10(num_classes=10, in_channels=3, image_size=32, width=10, mean=(0.0,), std=(1.0,),
              dropout: float = 0.0):
    """WRN-28-10 (`width` is the widening factor, 10 by default)."""
    return WideResNet(num_classes, in_channels, image_size, width, mean, std, depth=28, dropout=dropout)


@register_model("wrn_34_10")
def wrn_34_10(num_classes=10, in_channels=3, image_size=32, width=10, mean=(0.0,), std=(1.0,),
              dropout: float = 0.0):
    """WRN-34-10 (`width` is the widening factor, 10 by default)."""
    return WideResNet(num_classes, in_channels, image_size, width, mean, std, depth=34, dropout=dropout)
