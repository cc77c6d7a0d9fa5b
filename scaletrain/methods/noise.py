"""Gaussian input-noise augmentation: the training side of randomized smoothing.

Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
ICML 2019, sec. 3.3: train the base classifier f on x + d, d ~ N(0, sigma^2 I), with the
sigma that `scaletrain eval` certifies with (`eval.certify.sigma`), so the smoothed
classifier g(x) = argmax_c P(f(x + d) = c) is accurate. As in the paper the noisy input is
not clipped to [0, 1] (`clip=True` clips it).

Randomness: `generator` is one `torch.Generator` for the batch, or one per sample (the
trainer's generators keyed by global sample index: each sample's noise is then the same
whatever the number of ranks).
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import torch

from .mixing import is_sample_rng

GeneratorLike = Union[None, torch.Generator, Sequence[torch.Generator], Any]  # or a SampleRNG


def gaussian_noise(shape, generator: GeneratorLike = None, device=None) -> torch.Tensor:
    """Standard normal noise of `shape` (N, ...), fp32, from one generator, one per sample, or a SampleRNG."""
    if is_sample_rng(generator):
        return generator.randn(shape, device=device)
    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for {shape[0]} samples")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=torch.float32)
                        for g in generator]).to(device)


def gaussian_noise_batch(x: torch.Tensor, sigma: float, generator: GeneratorLike = None,
                         clip: bool = False) -> torch.Tensor:
    """x + sigma * N(0, I) (per-sample noise; optionally clipped to [0, 1])."""
    if sigma == 0:
        return x
    out = x + (sigma * gaussian_noise(x.shape, generator, x.device)).to(x.dtype)
    return out.clamp(0.0, 1.0) if clip else out
