"""Batched, per-sample-seeded augmentation.

Each sample's random choices come from a counter-based hash of
(seed, epoch, sample key) -- SplitMix64 (Steele, Lea & Flood, "Fast
Splittable Pseudorandom Number Generators", OOPSLA 2014) -- so a sample gets
the same crop and flip whichever rank, worker or batch it lands in: the
augmentation is invariant to world size and loader workers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        z = x
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def key_ids(keys: Sequence[str]) -> np.ndarray:
    """Numeric keys (what our writer produces) map to themselves; others are hashed."""
    out = np.empty(len(keys), np.uint64)
    for i, k in enumerate(keys):
        if k.isdigit():
            out[i] = int(k) & 0xFFFFFFFFFFFFFFFF
        else:
            import zlib

            out[i] = zlib.crc32(k.encode()) | (1 << 40)
    return out


def sample_random(keys: Sequence[str], seed: int, epoch: int, stream: int) -> np.ndarray:
    """One uint64 per sample for (seed, epoch, key, stream)."""
    with np.errstate(over="ignore"):
        base = splitmix64(np.array([seed & 0xFFFFFFFF], np.uint64))[0] ^ np.uint64(epoch * 0x10001 + stream)
        return splitmix64(splitmix64(key_ids(keys) ^ base))


def augment_batch(x: torch.Tensor, keys: Sequence[str], *, seed: int, epoch: int, crop_padding: int = 0,
                  hflip: bool = False, resize: Optional[int] = None) -> torch.Tensor:
    """x: float NCHW in [0, 1]. Random crop after zero padding, horizontal flip, then resize."""
    n, c, h, w = x.shape
    if crop_padding > 0 and n:
        p = int(crop_padding)
        r = sample_random(keys, seed, epoch, 1)
        span = np.uint64(2 * p + 1)
        oy = torch.from_numpy((r % span).astype(np.int64))
        ox = torch.from_numpy(((r // span) % span).astype(np.int64))
        padded = F.pad(x, (p, p, p, p))
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if hflip and n:
        flip = torch.from_numpy((sample_random(keys, seed, epoch, 2) & np.uint64(1)).astype(bool))
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if resize is not None and (h, w) != (resize, resize):
        down = resize < min(h, w)
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False, antialias=down)
        x = x.clamp_(0.0, 1.0)
    return x.contiguous()
