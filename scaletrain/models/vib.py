"""Variational information bottleneck head (Alemi, Fischer, Dillon & Murphy, "Deep
Variational Information Bottleneck", ICLR 2017).

The model's last linear layer h -> logits is replaced by a stochastic encoder and a decoder:

    (mu, s) = Linear(h) split in two;  sigma = softplus(s - 5)        (the paper's parametrisation)
    z = mu + sigma * eps, eps ~ N(0, I_K)   in training (reparametrisation trick);  z = mu in eval
    logits = Linear(z)

and the training objective gains beta * KL(N(mu, sigma^2) || N(0, I)) (eq. (13), r(z) = N(0, I)):

    KL = 1/2 * sum_k (mu_k^2 + sigma_k^2 - 1 - log sigma_k^2)

The head keeps the batch-mean KL of its latest training forward in `last_kl`; the `vib` method
adds beta * last_kl to the loss. (The paper averages 12 posterior samples at test time; using the
mean mu is its deterministic variant and keeps attacks' gradients exact.)
Randomness: a `SampleKeyedLayer` (scaletrain/rng.py): in training under the trainer eps of
sample i comes from its own stream keyed by (seed, step, replay, global sample index, this
layer's name), the same on 1 and N ranks and exact on resume; outside the trainer (nothing
bound) from the global torch RNG.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..rng import SampleKeyedLayer


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per sample."""
    return 0.5 * (mu.pow(2) + sigma.pow(2) - 1.0 - 2.0 * torch.log(sigma)).sum(1)


class VIBHead(SampleKeyedLayer, nn.Module):
    def __init__(self, in_features: int, dim: int, num_classes: int):
        super().__init__()
        self.dim = int(dim)
        self.encoder = nn.Linear(in_features, 2 * self.dim)
        self.decoder = nn.Linear(self.dim, num_classes)
        self.last_kl: Optional[torch.Tensor] = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu, s = self.encoder(h).float().chunk(2, dim=1)
        sigma = F.softplus(s - 5.0) + 1e-6
        if self.training:
            z = mu + sigma * self.sample_randn(mu.shape, device=mu.device)
            self.last_kl = gaussian_kl(mu, sigma).mean()
        else:
            z = mu
        return self.decoder(z.to(h.dtype))


def apply_vib(model: nn.Module, dim: int) -> nn.Module:
    """Replace the LAST nn.Linear of `model` (the classifier) by a VIBHead with a `dim`-dim bottleneck."""
    last = None
    for name, m in model.named_modules():
        if type(m) is nn.Linear:
            last = name
    if last is None:
        raise ValueError("VIB: the model has no nn.Linear classifier to replace")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, VIBHead(old.in_features, dim, old.out_features))
    return model


def vib_heads(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, VIBHead)]


def vib_kl(model: nn.Module) -> torch.Tensor:
    """Sum over the model's VIB heads of the batch-mean KL of their latest training forward."""
    kls = [m.last_kl for m in vib_heads(model) if m.last_kl is not None]
    if not kls:
        raise RuntimeError("vib: the model has no VIB head that ran a training forward (set model.vib_dim > 0)")
    return sum(kls)
