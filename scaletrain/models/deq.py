"""Implicit (deep equilibrium) layer and the classifier `deq_cnn`.

The layer outputs the fixed point z* = f(z*, x) of one residual cell (Bai, Kolter & Koltun,
"Deep equilibrium models", NeurIPS 2019), found without autograd by fixed-point iteration or by
Anderson acceleration (Walker & Ni, SIAM J. Numer. Anal. 2011: the next iterate is the mixture
of the last m images f(z_i) whose residuals have the least norm, weights summing to one).

Backward (implicit function theorem): for a loss gradient g at z*, the gradient to pass on is
u = (I - J_f(z*))^{-T} g, the fixed point of u = J_f^T u + g, solved by the same solver with
vector-Jacobian products, then propagated through one differentiable application of f. Only
that one application is stored for autograd, so memory does not grow with the iterations.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
from torch import nn

from . import register_model
from .common import ZooModel
from .ode import auto_downsample, conv_stem, group_norm, pool_head


def fixed_point_iter(f: Callable, z0: torch.Tensor, max_iter: int = 30, tol: float = 1e-4
                     ) -> Tuple[torch.Tensor, int, float]:
    """Iterate z <- f(z) until ||f(z) - z|| / ||f(z)|| < tol. Returns (z, iterations, residual)."""
    z, res = z0, float("inf")
    for k in range(1, max_iter + 1):
        fz = f(z)
        res = float((fz - z).norm() / (fz.norm() + 1e-9))
        z = fz
        if res < tol:
            break
    return z, k, res


def anderson(f: Callable, z0: torch.Tensor, max_iter: int = 30, tol: float = 1e-4, m: int = 5,
             lam: float = 1e-4, beta: float = 1.0) -> Tuple[torch.Tensor, int, float]:
    """Anderson acceleration with memory m (per-sample least squares, Tikhonov `lam`, mixing `beta`).

    With G_i = f(z_i) - z_i, solve min_a ||sum_i a_i G_i|| s.t. sum_i a_i = 1 (via the bordered
    normal equations, `lam` relative to the mean |G_i|^2), then
    z_next = beta sum a_i f(z_i) + (1 - beta) sum a_i z_i."""
    shape, dtype, b = z0.shape, z0.dtype, z0.shape[0]
    fn = lambda v: f(v.view(shape).to(dtype)).reshape(b, -1).float()  # noqa: E731
    d = z0[0].numel()
    X = torch.zeros(b, m, d, device=z0.device)
    F = torch.zeros(b, m, d, device=z0.device)
    X[:, 0], F[:, 0] = z0.reshape(b, -1).float(), fn(z0.reshape(b, -1).float())
    X[:, 1], F[:, 1] = F[:, 0], fn(F[:, 0])
    H = torch.zeros(b, m + 1, m + 1, device=z0.device)
    H[:, 0, 1:] = H[:, 1:, 0] = 1.0
    rhs = torch.zeros(b, m + 1, 1, device=z0.device)
    rhs[:, 0] = 1.0
    res, k, cur = float("inf"), 2, 1
    for k in range(2, max_iter + 1):
        n = min(k, m)
        G = F[:, :n] - X[:, :n]
        GG = G @ G.transpose(1, 2)
        scale = GG.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)[:, None, None]  # Tikhonov relative to |G|^2
        H[:, 1:n + 1, 1:n + 1] = GG + lam * scale * torch.eye(n, device=z0.device)
        a = torch.linalg.solve(H[:, :n + 1, :n + 1], rhs[:, :n + 1])[:, 1:n + 1, 0]
        cur = k % m
        X[:, cur] = beta * (a[:, None] @ F[:, :n])[:, 0] + (1 - beta) * (a[:, None] @ X[:, :n])[:, 0]
        F[:, cur] = fn(X[:, cur])
        res = float((F[:, cur] - X[:, cur]).norm() / (F[:, cur].norm() + 1e-9))
        if res < tol:
            break
    return F[:, cur].view(shape).to(dtype), k, res


SOLVERS = {"fixed_point": fixed_point_iter, "anderson": anderson}


class DEQLayer(nn.Module):
    """z* = f(z*, x) with an implicit-gradient backward (see the module docstring)."""

    def __init__(self, f: nn.Module, solver: str = "anderson", max_iter: int = 30, tol: float = 1e-4,
                 backward_max_iter: int = 30, backward_tol: float = 1e-4):
        super().__init__()
        self.f, self.solver = f, solver
        self.max_iter, self.tol, self.b_max_iter, self.b_tol = int(max_iter), float(tol), int(backward_max_iter), \
            float(backward_tol)
        self.stats: Dict[str, float] = {}

    def forward(self, x):
        solve = SOLVERS[self.solver]
        with torch.no_grad():
            z, it, res = solve(lambda z: self.f(z, x), torch.zeros_like(x), self.max_iter, self.tol)
        self.stats.update(forward_iters=it, forward_residual=res)
        z = self.f(z, x)  # re-engage autograd: gradients to the parameters and to x flow through here
        if torch.is_grad_enabled() and z.requires_grad:
            z0 = z.detach().requires_grad_()
            f0 = self.f(z0, x)

            def implicit_backward(grad):
                def step(u):
                    return torch.autograd.grad(f0, z0, u, retain_graph=True)[0] + grad
                u, bit, bres = solve(step, grad, self.b_max_iter, self.b_tol)
                self.stats.update(backward_iters=bit, backward_residual=bres)
                return u

            z.register_hook(implicit_backward)
        return z


class ResidualCell(nn.Module):
    """f(z, x) = GN(relu(z + GN(x + conv(relu(GN(conv(z))))))) (a residual cell as in MDEQ);
    small initial weights keep it contractive at the start of training."""

    def __init__(self, channels: int, init_std: float = 0.01):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels)
        self.conv2, self.norm2 = nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels)
        self.norm3 = group_norm(channels)
        for c in (self.conv1, self.conv2):
            nn.init.normal_(c.weight, 0.0, init_std)
            nn.init.zeros_(c.bias)

    def forward(self, z, x):
        o = self.conv2(torch.relu(self.norm1(self.conv1(z))))
        return self.norm3(torch.relu(z + self.norm2(x + o)))


@register_model("deq_cnn")
class DEQClassifier(ZooModel):
    """Conv stem (the injection x) -> implicit layer z* = f(z*, x) -> GN-ReLU-pool-linear head."""

    min_image_size = 4

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=64, mean=(0.0,), std=(1.0,),
                 solver: str = "anderson", max_iter: int = 30, tol: float = 1e-4, backward_max_iter: int = 30,
                 backward_tol: float = 1e-4, downsample=None, head_pool: int = 1):
        super().__init__(in_channels, image_size, mean, std)
        self.stem = conv_stem(in_channels, width, auto_downsample(image_size, downsample))
        self.deq = DEQLayer(ResidualCell(width), solver, max_iter, tol, backward_max_iter, backward_tol)
        self.head = pool_head(width, num_classes, head_pool)

    @staticmethod
    def check_kwargs(kw: Dict[str, Any]) -> None:
        from ..errors import ConfigError
        if kw.get("solver", "anderson") not in SOLVERS:
            raise ConfigError(f"key 'model.kwargs.solver': '{kw['solver']}' is not one of {', '.join(SOLVERS)}")
        for key in ("max_iter", "tol", "backward_max_iter", "backward_tol"):
            if key in kw and not kw[key] > 0:
                raise ConfigError(f"key 'model.kwargs.{key}': must be > 0, got {kw[key]}")

    def forward(self, x):
        return self.head(self.deq(self.stem(self.normalize(x))))
