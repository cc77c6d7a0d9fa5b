"""Parametric Noise Injection (Rakin, He & Fan, "Parametric Noise Injection: Trainable
Randomness to Improve Deep Neural Network Robustness against Adversarial Attack", CVPR 2019).

Every conv / linear weight W is replaced, in every forward pass (training AND test), by

    W~ = W + alpha * eta,    eta ~ N(0, std(W)^2)   (eq. (2)-(3), PNI-W)

with std(W) the standard deviation of the layer's weights (not back-propagated through, as in
the authors' code) and alpha a trainable scale: one per layer (`layer`) or one per output
channel (`channel`), initialised to `init` (0.25 in the paper). alpha is excluded from weight
decay (the paper: decay would drive it to 0); modules list it in `no_weight_decay`, which
`scaletrain.engine.optim.param_groups` reads. Robustness of such a model must be measured with
expectation-over-transformation gradients (eval.eot_samples, Athalye et al. 2018).

Randomness: each PNI layer draws from a generator seeded by (a per-model seed, the layer's
index, a step key, a per-layer call counter), all persistent buffers: saved in checkpoints
(resume is exact) and identical on every rank. The `pni` method add-on (methods/noise.py) sets
the step key to the optimizer step and resets the counters before every micro-batch, so the k-th
forward of a micro-batch (attack iterations, then the training forward) draws the same weight
noise on every rank and for every accumulated micro-batch: the same noise on 1 and N ranks.
Without it the counters simply keep counting (valid noise, not rank-independent).
"""
from __future__ import annotations

import hashlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("off", "layer", "channel")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


class _PNI:
    """Mixin: alpha, the counter and the noisy weight."""

    no_weight_decay = ("pni_alpha",)

    def _init_pni(self, mode: str, init: float, index: int):
        shape = (1,) if mode == "layer" else (self.weight.shape[0],) + (1,) * (self.weight.dim() - 1)
        self.pni_mode, self.pni_index = mode, int(index)
        self.pni_alpha = nn.Parameter(torch.full(shape, float(init)))
        self.register_buffer("pni_calls", torch.zeros((), dtype=torch.int64))
        self.register_buffer("pni_seed", torch.zeros((), dtype=torch.int64))
        self.register_buffer("pni_step", torch.zeros((), dtype=torch.int64))
        self.pni_enabled = True

    def noise(self) -> torch.Tensor:
        """eta / std(W): a standard normal draw of W's shape from this layer's keyed generator."""
        gen = torch.Generator(device=self.weight.device)
        gen.manual_seed(_seed(int(self.pni_seed), self.pni_index, int(self.pni_step), int(self.pni_calls)))
        with torch.no_grad():
            self.pni_calls += 1
        return torch.randn(self.weight.shape, generator=gen, device=self.weight.device, dtype=torch.float32)

    def noisy_weight(self) -> torch.Tensor:
        w = self.weight
        if not self.pni_enabled:
            return w
        std = w.detach().float().std()
        return w + (self.pni_alpha * std * self.noise()).to(w.dtype)


class PNIConv2d(_PNI, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.noisy_weight(), self.bias)


class PNILinear(_PNI, nn.Linear):
    def forward(self, x):
        return F.linear(x, self.noisy_weight(), self.bias)


def apply_pni(model: nn.Module, mode: str = "layer", init: float = 0.25, seed: Optional[int] = None) -> nn.Module:
    """Turn every nn.Conv2d / nn.Linear of `model` into its PNI version (in place; weights kept).
    `seed` (default: drawn from the global torch RNG, i.e. from the run's seed) keys the noise."""
    if mode == "off":
        return model
    if mode not in MODES:
        raise ValueError(f"PNI mode must be one of {', '.join(MODES)}, got '{mode}'")
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,), device="cpu"))
    index = [0]

    def swap(parent: nn.Module):
        for name, child in parent.named_children():
            cls = PNIConv2d if type(child) is nn.Conv2d else PNILinear if type(child) is nn.Linear else None
            if cls is None:
                swap(child)
                continue
            child.__class__ = cls            # same parameters, same state-dict keys, plus alpha
            child._init_pni(mode, init, index[0])
            child.pni_seed.fill_(seed)
            index[0] += 1

    swap(model)
    if index[0] == 0:
        raise ValueError("PNI: the model has no nn.Conv2d or nn.Linear layer")
    return model


def pni_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, _PNI)]


def key_pni(model: nn.Module, step: int) -> int:
    """Key the noise of every PNI layer to `step` and restart the call counters; returns the layer count."""
    layers = pni_layers(model)
    with torch.no_grad():
        for m in layers:
            m.pni_step.fill_(int(step))
            m.pni_calls.zero_()
    return len(layers)


def set_pni(model: nn.Module, enabled: bool) -> None:
    """Switch the noise on/off (it is on in training and at test time, as in the paper)."""
    for m in pni_layers(model):
        m.pni_enabled = bool(enabled)
