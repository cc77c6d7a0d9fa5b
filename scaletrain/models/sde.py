"""Neural SDE classifier `sde_cnn`: an ODE block with noise injected into its dynamics.

    dh = f(t, h) dt + g(h) dW_t,   g(h) = sigma (additive) or sigma * h (multiplicative)

integrated by Euler-Maruyama, h_{n+1} = h_n + f(t_n, h_n) dt + g(h_n) sqrt(dt) xi_n with
xi_n ~ N(0, I) (Kloeden & Platen 1992, Sec. 9.1; noise in the dynamics for robustness as in
Liu et al., "How does noise help robustness? Explanation and exploration under the neural SDE
framework", CVPR 2020). The drift f is the ODE classifier's convolutional ODE function, so with
sigma = 0 the model equals `node_cnn` with the Euler solver (tests/models check it).

Noise is on in training; in evaluation only with `test_noise: true`, and then the output is the
log of the class probabilities averaged over `test_samples` (K) independent noise draws.
Such a randomised model must be attacked with expectation over transformation (Athalye et al.
2018): `eval.eot_samples` averages the attack's input gradients over that many forwards.

Randomness: the block is a `SampleKeyedLayer` (scaletrain/rng.py). Inside a training step the
trainer binds per-sample streams keyed by (seed, step, replay, global sample index, layer name):
sample i's noise is the same on 1 and N ranks and after a resume. Otherwise (evaluation, plain
PyTorch use) the noise comes from the model's own `torch.Generator` seeded with `noise_seed`, so
a fresh model gives the same noise sequence (deterministic given the seed; not checkpointed).
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch
from torch import nn

from . import register_model
from .common import ZooModel
from ..rng import SampleKeyedLayer
from .ode import ConvODEFunc, auto_downsample, conv_stem, pool_head


class SDEBlock(SampleKeyedLayer, nn.Module):
    def __init__(self, func: nn.Module, sigma: float = 0.1, diffusion: str = "additive", t1: float = 1.0,
                 steps: int = 4, noise_seed: int = 0):
        super().__init__()
        self.func, self.sigma, self.diffusion = func, float(sigma), diffusion
        self.t1, self.steps, self.noise_seed = float(t1), int(steps), int(noise_seed)
        self.method, self.rtol, self.atol = "euler_maruyama", 0.0, 0.0
        self._gen: Dict[str, torch.Generator] = {}

    def reset_noise(self, seed=None) -> None:
        """Restart the noise sequence (from `noise_seed`, or `seed`)."""
        self._gen.clear()
        if seed is not None:
            self.noise_seed = int(seed)

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        if self.rng_bound:   # inside a training step: per-sample streams (rank-independent, resume-exact)
            return self.sample_randn(like.shape, device=like.device).to(like.dtype)
        key = str(like.device)
        if key not in self._gen:
            self._gen[key] = torch.Generator(device=like.device).manual_seed(self.noise_seed)
        return torch.randn(like.shape, generator=self._gen[key], device=like.device, dtype=like.dtype)

    def forward(self, h, noise: bool = True):
        dt = self.t1 / self.steps
        t = 0.0
        for _ in range(self.steps):
            drift = self.func(t, h)
            if noise and self.sigma > 0:
                g = self.sigma if self.diffusion == "additive" else self.sigma * h
                h = h + drift * dt + g * math.sqrt(dt) * self._noise(h)
            else:
                h = h + drift * dt
            t += dt
        return h


@register_model("sde_cnn")
class SDEClassifier(ZooModel):
    """Conv stem -> Euler-Maruyama SDE block -> GN-ReLU-pool-linear head."""

    min_image_size = 4
    randomized = True  # `scaletrain eval` attacks it with expectation over transformation

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=64, mean=(0.0,), std=(1.0,),
                 sigma: float = 0.1, diffusion: str = "additive", steps: int = 4, t1: float = 1.0,
                 test_noise: bool = False, test_samples: int = 1, noise_seed: int = 0, downsample=None,
                 head_pool: int = 1):
        super().__init__(in_channels, image_size, mean, std)
        self.stem = conv_stem(in_channels, width, auto_downsample(image_size, downsample))
        self.block = SDEBlock(ConvODEFunc(width), sigma, diffusion, t1, steps, noise_seed)
        self.head = pool_head(width, num_classes, head_pool)
        self.test_noise, self.test_samples = bool(test_noise), int(test_samples)
        self.randomized = self.test_noise

    @staticmethod
    def check_kwargs(kw: Dict[str, Any]) -> None:
        from ..errors import ConfigError
        if kw.get("diffusion", "additive") not in ("additive", "multiplicative"):
            raise ConfigError(f"key 'model.kwargs.diffusion': '{kw['diffusion']}' is not one of "
                              "additive, multiplicative")
        if kw.get("sigma", 0.1) < 0:
            raise ConfigError(f"key 'model.kwargs.sigma': must be >= 0, got {kw['sigma']}")
        for key in ("steps", "test_samples", "t1"):
            if key in kw and not kw[key] > 0:
                raise ConfigError(f"key 'model.kwargs.{key}': must be > 0, got {kw[key]}")

    @staticmethod
    def randomized_at_test(kw: Dict[str, Any]) -> bool:
        return bool(kw.get("test_noise", False)) and float(kw.get("sigma", 0.1)) > 0

    def integration(self) -> Dict[str, Any]:
        return {"solver": "euler_maruyama", "steps": self.block.steps, "t1": self.block.t1, "sigma": self.block.sigma}

    def set_integration(self, steps=None, **_) -> None:
        if steps is not None:
            self.block.steps = int(steps)

    def nfe(self) -> int:
        return int(self.block.func.nfe)

    def forward(self, x):
        h0 = self.stem(self.normalize(x))
        if self.training:
            return self.head(self.block(h0, noise=True))
        if not self.test_noise:
            return self.head(self.block(h0, noise=False))
        # log of the class probabilities averaged over K noise draws (a logit-like score):
        # log mean_k softmax(z_k) = logsumexp_k log_softmax(z_k) - log K
        logp = torch.stack([torch.log_softmax(self.head(self.block(h0, noise=True)).float(), -1)
                            for _ in range(self.test_samples)])
        return torch.logsumexp(logp, 0) - math.log(self.test_samples)
