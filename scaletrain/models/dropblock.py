"""DropBlock (Ghiasi, Lin & Le, "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018, Algorithm 1).

In training, block centres are drawn i.i.d. Bernoulli(gamma) over the positions where a
whole block fits, every block_size x block_size block around a centre is zeroed, and the
kept activations are rescaled by count(mask) / count(ones):

    gamma = drop_prob / block_size^2 * (H * W) / ((H - block_size + 1) * (W - block_size + 1))

(eq. (1) of the paper, for rectangular maps), so that the expected dropped fraction is about
`drop_prob` (blocks overlap, so slightly less). In eval mode it is the identity.
Masks are drawn per sample and channel ("the same mask for all channels" is the paper's
other variant, `shared_channels=True`). Draws use the global torch RNG, which the trainer
seeds and checkpoints; they are not keyed by sample index (docs/methods.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropblock_gamma(drop_prob: float, block_size: int, height: int, width: int) -> float:
    valid = max(height - block_size + 1, 1) * max(width - block_size + 1, 1)
    return drop_prob / (block_size ** 2) * (height * width) / valid


def dropblock_mask(shape, drop_prob: float, block_size: int, generator=None, device=None,
                   shared_channels: bool = False) -> torch.Tensor:
    """A {0,1} keep-mask of `shape` (N, C, H, W) as Algorithm 1 draws it."""
    n, c, h, w = shape
    bs = min(block_size, h, w)
    gamma = dropblock_gamma(drop_prob, bs, h, w)
    cc = 1 if shared_channels else c
    # centres only where the whole block fits (valid region), padded back to H x W
    vh, vw = h - bs + 1, w - bs + 1
    centres = (torch.rand((n, cc, vh, vw), generator=generator, device=device) < gamma).float()
    pad_t, pad_l = bs // 2, bs // 2
    centres = F.pad(centres, (pad_l, w - vw - pad_l, pad_t, h - vh - pad_t))
    # grow every centre to a bs x bs block (max-pool with stride 1 and 'same' padding)
    blocks = F.max_pool2d(centres, kernel_size=bs, stride=1, padding=bs // 2)
    if bs % 2 == 0:  # even kernels give H+1 x W+1: drop the extra row/column
        blocks = blocks[:, :, :h, :w]
    keep = 1.0 - blocks
    return keep.expand(n, c, h, w) if shared_channels else keep


class DropBlock2d(nn.Module):
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
                              shared_channels=self.shared_channels).to(x.dtype)
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"
