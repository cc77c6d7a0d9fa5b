"""Counter-based Gaussian noise: the same number for the same (seed, step, parameter, element),
whatever the world size, ZeRO stage or partition offsets.

Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC 2011) written with torch int64 tensor ops, so it runs vectorised on CPU and GPU and needs no
generator state. One Philox call maps a 128-bit counter and a 64-bit key to four 32-bit words;
two Box-Muller transforms turn them into four standard normals. Element `i` of a parameter's
flattened noise sequence is lane `i % 4` of block `i // 4` (the fixed block size is 4 elements),
so a rank that owns elements [a, b) of a parameter computes only blocks a//4 .. (b-1)//4.

    counter = (block lo32, block hi32, step, stream)       key = (seed, crc32(parameter name))

`stream` separates independent noise sources of one optimizer (SGLD noise, the O-step of BAOAB,
...). 32-bit products are split into 16-bit halves so no int64 product overflows.
"""
from __future__ import annotations

import math
import zlib

import torch

MASK = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57          # Philox4x32 multipliers (Random123)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85          # Weyl key increments (golden ratio, sqrt(3) - 1)
BLOCK = 4                                  # elements per Philox call


def _mulhilo(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit words of the 64-bit product a * b, for a < 2^32 and int64 b < 2^32."""
    t_lo = b * (a & 0xFFFF)                # < 2^48
    t_hi = b * (a >> 16)                   # < 2^48; product = t_hi * 2^16 + t_lo
    mid = ((t_hi & 0xFFFF) << 16) + t_lo   # < 2^49
    return ((t_hi >> 16) + (mid >> 32)) & MASK, mid & MASK


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    """Philox4x32-`rounds` on int64 tensors holding uint32 values; returns four uint32 tensors."""
    k0, k1 = k0 & MASK, k1 & MASK
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & MASK, (k1 + _W1) & MASK
    return c0, c1, c2, c3


def name_key(name: str) -> int:
    """A stable 32-bit key of a parameter name (crc32: the same in every process)."""
    return zlib.crc32(name.encode("utf-8")) & MASK


def _uniform(x: torch.Tensor) -> torch.Tensor:
    return (x.double() + 0.5) * (1.0 / 4294967296.0)   # in (0, 1), never 0


def normal(seed: int, step: int, name: str, start: int, count: int, stream: int = 0,
           device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normals for elements [start, start + count) of parameter `name`'s noise at `step`."""
    if count <= 0:
        return torch.zeros(0, device=device, dtype=dtype)
    first, last = start // BLOCK, (start + count - 1) // BLOCK
    blocks = torch.arange(first, last + 1, device=device, dtype=torch.int64)
    seed = int(seed)
    k0 = (seed ^ (seed >> 32)) & MASK
    c2 = torch.full_like(blocks, int(step) & MASK)
    c3 = torch.full_like(blocks, int(stream) & MASK)
    x0, x1, x2, x3 = philox4x32(blocks & MASK, (blocks >> 32) & MASK, c2, c3, k0, name_key(name))
    # Box-Muller (float64, then cast): (x0, x1) -> lanes 0, 1; (x2, x3) -> lanes 2, 3
    out = torch.empty(blocks.numel(), BLOCK, device=device, dtype=torch.float64)
    for lane, (ua, ub) in enumerate(((x0, x1), (x2, x3))):
        r = torch.sqrt(-2.0 * torch.log(_uniform(ua)))
        ang = (2.0 * math.pi) * _uniform(ub)
        out[:, 2 * lane] = r * torch.cos(ang)
        out[:, 2 * lane + 1] = r * torch.sin(ang)
    off = start - first * BLOCK
    return out.view(-1)[off:off + count].to(dtype)
