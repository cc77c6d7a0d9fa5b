"""Pieces every zoo model shares: input normalisation inside the model, and `describe()`.

Normalisation lives in the model so attacks and certification work on [0, 1] pixels.
`describe()` reports the parameter count and the forward FLOPs of one sample, counted by
`torch.utils.flop_counter.FlopCounterMode` (a multiply-add = 2 FLOPs; convolutions, matmuls and
linear layers are counted, element-wise ops are not), at the model's resolution or a given one.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class Normalize(nn.Module):
    """(x - mean) / std per channel, as buffers, so attacks can work in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int):
        super().__init__()
        mean = list(mean) * channels if len(mean) == 1 else list(mean)
        std = list(std) * channels if len(std) == 1 else list(std)
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {channels} channels")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        # mean 0 and std 1 (MNIST's published nets): the layer is the identity; skipping its two
        # element-wise ops and their backward saved ~4% of a wong_mnist fast-AT step on CPU
        self.identity = all(m == 0.0 for m in mean) and all(s == 1.0 for s in std)

    def forward(self, x):
        if self.identity:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe(model: nn.Module, image_size: int, in_channels: int) -> Dict[str, Any]:
    """Parameter count and forward FLOPs per sample of any image classifier at `image_size`.

    The FLOPs are counted on one sample in eval mode (no gradient), so randomised or adaptive
    models report the cost of the forward they run in evaluation (K samples for an SDE averaged
    at test time; the steps an adaptive solver took for this input)."""
    p = next(model.parameters(), None)
    device = p.device if p is not None and p.device.type != "meta" else torch.device("cpu")
    x = torch.rand(1, in_channels, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        model.train(was_training)
    return {"name": type(model).__name__, "params": count_parameters(model),
            "trainable_params": count_parameters(model, trainable_only=True),
            "flops_per_sample": int(fc.get_total_flops()), "image_size": int(image_size),
            "in_channels": int(in_channels)}


class ZooModel(nn.Module):
    """Base of the zoo's classifiers: holds the input geometry, the `normalize` layer and `describe()`.

    Subclasses call `super().__init__(in_channels, image_size, mean, std)` and apply
    `self.normalize` first in `forward`. Class attributes declare what the data must satisfy,
    checked when a run starts (models.check_data): `fixed_image_size` (a head sized for exactly
    `image_size`) and `min_image_size`."""

    fixed_image_size: bool = False
    min_image_size: int = 1

    def __init__(self, in_channels: int, image_size: int, mean=(0.0,), std=(1.0,)):
        super().__init__()
        self.in_channels, self.image_size = int(in_channels), int(image_size)
        self.normalize = Normalize(mean, std, in_channels)

    def describe(self, image_size: Optional[int] = None) -> Dict[str, Any]:
        return describe(self, int(image_size or self.image_size), self.in_channels)


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output side of a convolution / pooling (floor), as in torch.nn.Conv2d's docs."""
    return (size + 2 * padding - kernel) // stride + 1
