"""A ResNet read as the forward-Euler discretisation of an ODE: `resnet_ode`.

    x_{k+1} = x_k + h f_k(x_k),   k = 0 .. depth-1,   h = step_size (default t1/depth)

(Haber & Ruthotto, "Stable architectures for deep neural networks", Inverse Problems 2017;
E, "A proposal on machine learning via dynamical systems", 2017). `depth` and `step_size`
are configurable; after training, `set_integration(step_size=...)` changes h (and, with
`shared_weights: true`, `steps=` changes the depth at a fixed horizon), which `scaletrain analyze`
uses to measure the sensitivity of accuracy to the discretisation.

`antisymmetric: true` is Haber & Ruthotto's stable variant (their Eq. 3.3 with a convolution):

    f_k(x) = relu((K_k - K_k^T - gamma I) x + b_k)

K_k a 3x3 convolution with C -> C channels and K_k^T its adjoint (the transposed convolution
with the same weights), so K - K^T is antisymmetric, its eigenvalues are imaginary, and the
continuous dynamics neither blow up nor vanish; gamma > 0 damps the forward-Euler
discretisation (stable for small h). The plain block is f_k(x) = conv(relu(GN(conv(x)))).
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model
from .common import ZooModel
from .ode import auto_downsample, conv_stem, group_norm, pool_head


class AntisymmetricConv(nn.Module):
    def __init__(self, channels: int, gamma: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.gamma = float(gamma)

    def forward(self, x):
        k = F.conv2d(x, self.weight, padding=1) - F.conv_transpose2d(x, self.weight, padding=1)
        return torch.relu(k - self.gamma * x + self.bias.view(1, -1, 1, 1))


class PlainResidualFn(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.norm, self.conv2 = (nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels),
                                             nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return self.conv2(torch.relu(self.norm(self.conv1(x))))


@register_model("resnet_ode")
class ResNetODE(ZooModel):
    min_image_size = 4

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=32, mean=(0.0,), std=(1.0,),
                 depth: int = 8, step_size=None, t1: float = 1.0, antisymmetric: bool = False,
                 gamma: float = 0.1, shared_weights: bool = False, downsample=None, head_pool: int = 1):
        super().__init__(in_channels, image_size, mean, std)
        self.stem = conv_stem(in_channels, width, auto_downsample(image_size, downsample))
        make = (lambda: AntisymmetricConv(width, gamma)) if antisymmetric else (lambda: PlainResidualFn(width))
        self.shared = bool(shared_weights)
        self.fns = nn.ModuleList([make()] if self.shared else [make() for _ in range(depth)])
        self.depth, self.t1 = int(depth), float(t1)
        self.step_size = float(step_size) if step_size is not None else self.t1 / self.depth
        self.head = pool_head(width, num_classes, head_pool)

    @staticmethod
    def check_kwargs(kw: Dict[str, Any]) -> None:
        from ..errors import ConfigError
        for key in ("depth", "step_size", "t1"):
            if kw.get(key) is not None and not float(kw[key]) > 0:
                raise ConfigError(f"key 'model.kwargs.{key}': must be > 0, got {kw[key]}")
        if kw.get("gamma", 0.1) < 0:
            raise ConfigError(f"key 'model.kwargs.gamma': must be >= 0, got {kw['gamma']}")

    def integration(self) -> Dict[str, Any]:
        return {"solver": "euler", "steps": self.depth, "step_size": self.step_size,
                "t1": self.step_size * self.depth}

    def set_integration(self, steps=None, step_size=None, **_) -> None:
        """New step size, or (shared weights only) a new depth with the same horizon t = h * depth."""
        if steps is not None and steps != self.depth:
            if not self.shared:
                raise ValueError("resnet_ode: the number of steps is the number of weight layers "
                                 "unless shared_weights=true; change step_size instead")
            horizon = self.step_size * self.depth
            self.depth, self.step_size = int(steps), horizon / int(steps)
        if step_size is not None:
            self.step_size = float(step_size)

    def forward(self, x):
        h = self.stem(self.normalize(x))
        for k in range(self.depth):
            h = h + self.step_size * self.fns[0 if self.shared else k](h)
        return self.head(h)
