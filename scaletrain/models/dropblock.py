"""DropBlock (Ghiasi, Lin & Le, "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018, Algorithm 1).

In training, block centres are drawn i.i.d. Bernoulli(gamma) over the positions where a
whole block fits, every block_size x block_size block around a centre is zeroed, and the
kept activations are rescaled by count(mask) / count(ones) of each sample's mask:

    gamma = drop_prob / block_size^2 * (H * W) / ((H - block_size + 1) * (W - block_size + 1))

(eq. (1) of the paper, for rectangular maps), so that the expected dropped fraction is about
`drop_prob` (blocks overlap, so slightly less). In eval mode it is the identity.
Masks are drawn per sample and channel ("the same mask for all channels" is the paper's
other variant, `shared_channels=True`). Randomness: a `SampleKeyedLayer` (scaletrain/rng.py):
in training under the trainer each sample's mask comes from its own stream keyed by (seed,
step, replay, global sample index, this layer's name), and the rescaling is per sample, so a
sample's output depends only on the sample and its key: the same on 1 and N ranks, exact on
resume. Outside the trainer (nothing bound) masks come from the global torch RNG.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..rng import SampleKeyedLayer


def dropblock_gamma(drop_prob: float, block_size: int, height: int, width: int) -> float:
    valid = max(height - block_size + 1, 1) * max(width - block_size + 1, 1)
    return drop_prob / (block_size ** 2) * (height * width) / valid


def dropblock_mask(shape, drop_prob: float, block_size: int, generator=None, device=None,
                   shared_channels: bool = False, uniform=None) -> torch.Tensor:
    """A {0,1} keep-mask of `shape` (N, C, H, W) as Algorithm 1 draws it. The uniforms come from
    `uniform(shape)` when given (a keyed layer's per-sample draws), else from `generator`."""
    n, c, h, w = shape
    bs = min(block_size, h, w)
    gamma = dropblock_gamma(drop_prob, bs, h, w)
    cc = 1 if shared_channels else c
    # centres only where the whole block fits (valid region), padded back to H x W
    vh, vw = h - bs + 1, w - bs + 1
    u = uniform((n, cc, vh, vw)) if uniform is not None else \
        torch.rand((n, cc, vh, vw), generator=generator, device=device)
    centres = (u.to(device) < gamma).float()
    pad_t, pad_l = bs // 2, bs // 2
    centres = F.pad(centres, (pad_l, w - vw - pad_l, pad_t, h - vh - pad_t))
    # grow every centre to a bs x bs block (max-pool with stride 1 and 'same' padding)
    blocks = F.max_pool2d(centres, kernel_size=bs, stride=1, padding=bs // 2)
    if bs % 2 == 0:  # even kernels give H+1 x W+1: drop the extra row/column
        blocks = blocks[:, :, :h, :w]
    keep = 1.0 - blocks
    return keep.expand(n, c, h, w) if shared_channels else keep


class DropBlock2d(SampleKeyedLayer, nn.Module):
    def __init__(self, drop_prob: float = 0.1, block_size: int = 3, shared_channels: bool = False):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.drop_prob, self.block_size, self.shared_channels = float(drop_prob), int(block_size), shared_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = dropblock_mask(x.shape, self.drop_prob, self.block_size, device=x.device,
                              shared_channels=self.shared_channels,
                              uniform=lambda s: self.sample_rand(s, device=x.device)).to(x.dtype)
        # count(M) / count_ones(M) per sample (Algorithm 1, step 6)
        ones = keep.flatten(1).sum(1).clamp(min=1.0).view(-1, *([1] * (keep.dim() - 1)))
        return x * keep * (keep[0].numel() / ones)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"
