"""Neural ODEs: solvers, a convolutional ODE block, and the ODE classifier `node_cnn`.

An ODE block maps h(0) to h(T) by integrating dh/dt = f(t, h; theta) (Chen, Rubanova, Bettencourt
& Duvenaud, "Neural ordinary differential equations", NeurIPS 2018). Solvers:

- `euler`, `rk4`: fixed steps of size T/steps, written here (explicit Euler; the classical
  4th-order Runge-Kutta, global error O(h^4): tests/models check the order on a linear ODE);
- `dopri5` (or any adaptive method of torchdiffeq): Dormand-Prince 5(4) with step-size control
  by `rtol`/`atol`, from torchdiffeq (https://github.com/rtqichen/torchdiffeq).

`adjoint: true` computes gradients with the adjoint method (torchdiffeq.odeint_adjoint:
memory O(1) in the number of steps, one more backward ODE solve); otherwise autograd
backpropagates through the solver's operations. The ODE function takes time as an extra input
channel (ConcatConv2d, as in the paper's code), with GroupNorm (BatchNorm statistics would
change along the trajectory).
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from . import register_model
from .common import ZooModel

FIXED = ("euler", "rk4")
ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun", "dopri8")


def odeint_fixed(func, y: torch.Tensor, t0: float, t1: float, steps: int, method: str = "rk4") -> torch.Tensor:
    """Integrate dy/dt = func(t, y) from t0 to t1 in `steps` equal steps (explicit Euler or RK4)."""
    h = (t1 - t0) / steps
    t = t0
    for _ in range(steps):
        if method == "euler":
            y = y + h * func(t, y)
        elif method == "rk4":  # classical Runge-Kutta (e.g. Hairer, Norsett & Wanner, Vol. I, II.1)
            k1 = func(t, y)
            k2 = func(t + h / 2, y + (h / 2) * k1)
            k3 = func(t + h / 2, y + (h / 2) * k2)
            k4 = func(t + h, y + h * k3)
            y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        else:
            raise ValueError(f"unknown fixed-step method {method!r}")
        t = t + h
    return y


def odeint(func, y0: torch.Tensor, t1: float, method: str = "rk4", steps: int = 4, rtol: float = 1e-3,
           atol: float = 1e-4, adjoint: bool = False) -> torch.Tensor:
    """h(t1) from h(0) = y0 with the chosen solver (see the module docstring)."""
    if method in FIXED and not adjoint:
        return odeint_fixed(func, y0, 0.0, t1, steps, method)
    import torchdiffeq
    t = torch.tensor([0.0, t1], device=y0.device, dtype=torch.float32)
    kw: Dict[str, Any] = dict(method=method)
    if method in FIXED:
        kw["options"] = {"step_size": t1 / steps}
    else:
        kw.update(rtol=rtol, atol=atol)
    if adjoint:
        kw["adjoint_params"] = tuple(func.parameters())
        return torchdiffeq.odeint_adjoint(func, y0, t, **kw)[-1]
    return torchdiffeq.odeint(func, y0, t, **kw)[-1]


def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, c), c)


class ConcatConv2d(nn.Module):
    """3x3 convolution of [h, t] (time as a constant extra channel)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin + 1, cout, 3, padding=1)

    def forward(self, t, h):
        tt = torch.ones_like(h[:, :1]) * t
        return self.conv(torch.cat([h, tt], 1))


class ConvODEFunc(nn.Module):
    """f(t, h) = conv(t, relu(GN(conv(t, relu(GN(h)))))) (GN = GroupNorm); counts evaluations in `nfe`."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(channels), ConcatConv2d(channels, channels)
        self.norm2, self.conv2 = group_norm(channels), ConcatConv2d(channels, channels)
        self.norm3 = group_norm(channels)
        self.nfe = 0

    def forward(self, t, h):
        self.nfe += 1
        o = self.conv1(t, torch.relu(self.norm1(h)))
        o = self.conv2(t, torch.relu(self.norm2(o)))
        return self.norm3(o)


class ODEBlock(nn.Module):
    """h(0) -> h(T) through `func` with the configured solver; `steps` and `method` may be changed
    after training (analysis of the step size / solver)."""

    def __init__(self, func: nn.Module, t1: float = 1.0, method: str = "rk4", steps: int = 4,
                 rtol: float = 1e-3, atol: float = 1e-4, adjoint: bool = False):
        super().__init__()
        self.func, self.t1, self.method, self.steps = func, float(t1), method, int(steps)
        self.rtol, self.atol, self.adjoint = float(rtol), float(atol), bool(adjoint)

    def forward(self, h):
        return odeint(self.func, h, self.t1, self.method, self.steps, self.rtol, self.atol, self.adjoint)


def conv_stem(in_channels: int, width: int, downsample: int) -> nn.Sequential:
    """conv3x3-GN-ReLU, then `downsample` stride-2 4x4 convolutions (Chen et al.'s MNIST ODE-Net)."""
    layers = [nn.Conv2d(in_channels, width, 3, padding=1), group_norm(width), nn.ReLU()]
    for _ in range(downsample):
        layers += [nn.Conv2d(width, width, 4, 2, 1), group_norm(width), nn.ReLU()]
    return nn.Sequential(*layers)


def pool_head(width: int, num_classes: int, pool: int = 1) -> nn.Sequential:
    """GN-ReLU, average pooling to pool x pool (1 = global, as Chen et al.), linear."""
    return nn.Sequential(group_norm(width), nn.ReLU(), nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
                         nn.Linear(width * pool * pool, num_classes))


def auto_downsample(image_size: int, downsample) -> int:
    """None = 2 stride-2 convs from 28x28 up, 1 from 16x16, none below (8x8 digits)."""
    if downsample is not None:
        return int(downsample)
    return 2 if image_size >= 28 else 1 if image_size >= 16 else 0


def check_solver(kw: Dict[str, Any]) -> None:
    from ..errors import ConfigError
    method = kw.get("solver", "rk4")
    if method not in FIXED + ADAPTIVE:
        raise ConfigError(f"key 'model.kwargs.solver': '{method}' is not one of {', '.join(FIXED + ADAPTIVE)}")
    for key in ("steps", "t1", "rtol", "atol"):
        if key in kw and not float(kw[key]) > 0:
            raise ConfigError(f"key 'model.kwargs.{key}': must be > 0, got {kw[key]}")


class IntegrationMixin:
    """Models whose depth is an integration: read and change solver settings after training."""

    def integration(self) -> Dict[str, Any]:
        b = self.block
        return {"solver": b.method, "steps": b.steps, "t1": b.t1, "rtol": b.rtol, "atol": b.atol}

    def set_integration(self, **kw) -> None:
        for k, v in kw.items():
            setattr(self.block, {"solver": "method"}.get(k, k), v)

    def nfe(self) -> int:
        return int(self.block.func.nfe)


@register_model("node_cnn")
class NODEClassifier(IntegrationMixin, ZooModel):
    """Conv stem -> convolutional ODE block over [0, t1] -> GN-ReLU-pool-linear head."""

    min_image_size = 4

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=64, mean=(0.0,), std=(1.0,),
                 solver: str = "rk4", steps: int = 4, t1: float = 1.0, rtol: float = 1e-3, atol: float = 1e-4,
                 adjoint: bool = False, downsample=None, head_pool: int = 1):
        super().__init__(in_channels, image_size, mean, std)
        self.stem = conv_stem(in_channels, width, auto_downsample(image_size, downsample))
        self.block = ODEBlock(ConvODEFunc(width), t1, solver, steps, rtol, atol, adjoint)
        self.head = pool_head(width, num_classes, head_pool)

    check_kwargs = staticmethod(check_solver)

    def forward(self, x):
        return self.head(self.block(self.stem(self.normalize(x))))
