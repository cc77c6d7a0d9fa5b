"""Random numbers keyed by global sample index: the same numbers for the same sample at any world size.

A training step sees a micro-batch of a global batch. With data parallelism the micro-batch
that rank r holds is a slice of the global batch; with gradient accumulation on one rank the
same slice is a micro-batch of that rank. Random draws made per micro-batch from a shared
generator would therefore differ between 1 and N ranks. `SampleRNG` draws each sample's
numbers from its own counter-based stream, keyed by a hash of (seed, key..., draw number,
global sample index), so a sample gets the same random start / noise / box wherever it is processed.

    rng = SampleRNG(seed, index, "step", 12)     # index: LongTensor of global sample indices
    u = rng.rand(x.shape, device=x.device)        # row i depends only on (seed, key, index[i], draw)
    sub = rng.fork("probe")                       # an independent stream for another use
    part = rng.subset(mask)                       # the same per-sample streams for a subset

Each call to `rand`/`randn` advances a draw counter, so calling the same sequence of draws
gives the same numbers; different calls give independent numbers. The numbers are counter-based
(an integer hash of key, sample and element index, computed in vectorised int64 arithmetic on
the target device), so there is no per-sample generator object or host loop, and the bits are
the same on CPU and GPU and at any world size.
Plain PyTorch: attacks, methods and the trainer import it; it imports nothing of ours.
"""
from __future__ import annotations

import hashlib
import math
import struct
from typing import Optional, Sequence

import torch


def mix_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints and strings (stable across processes and versions)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        if isinstance(p, str):
            h.update(b"s" + p.encode())
        else:
            h.update(b"i" + struct.pack("<q", int(p)))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


_GOLDEN, _C1, _C2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number
    generators", OOPSLA 2014) on int64 tensors; multiplication wraps modulo 2^64 (two's
    complement), as torch's int64 arithmetic does on CPU and CUDA."""
    x = x ^ _srl(x, 30)          # a new tensor: the input is left alone
    x.mul_(_C1)
    x.bitwise_xor_(_srl(x, 27))
    x.mul_(_C2)
    return x.bitwise_xor_(_srl(x, 31))


class SampleRNG:
    """Per-sample random streams (see the module docstring).

    Counter-based: element j of sample i's draw d is a pure function of (seed, key..., d, index_i, j)
    (SplitMix64, see `_bits`).
    Vectorised integer arithmetic on the target device: no generator objects, no host loop, the
    same bits on CPU and GPU (the Gaussian transform may differ in the last float bit)."""

    def __init__(self, seed: int, index: torch.Tensor, *key):
        self.seed = int(seed)
        self.index = torch.as_tensor(index, dtype=torch.int64).reshape(-1).cpu()
        self.key = tuple(key)
        self._draw = 0

    def __len__(self) -> int:
        return int(self.index.numel())

    # -------------------------------------------------------------- derived streams
    def fork(self, *key) -> "SampleRNG":
        """An independent stream for the same samples (e.g. 'attack', 'probe', 'noise')."""
        return SampleRNG(self.seed, self.index, *self.key, *key)

    def subset(self, sel) -> "SampleRNG":
        """The streams of a subset of the samples (boolean mask or index tensor), with the same key
        and draw position: a draw on the subset gives each sample what it would get in a new call."""
        sel = torch.as_tensor(sel).cpu()
        out = SampleRNG(self.seed, self.index[sel], *self.key)
        out._draw = self._draw
        return out

    def generator(self, *key, device: Optional[torch.device] = None) -> torch.Generator:
        """One generator for a whole-batch draw, keyed by the batch's first global sample index
        (e.g. a mixing permutation): the same across world sizes as long as the micro-batch holds
        the same samples (true for 1 rank x accumulation vs N ranks with this trainer)."""
        first = int(self.index[0]) if len(self) else -1
        g = torch.Generator(device=device or "cpu")
        g.manual_seed(mix_seed(self.seed, *self.key, *key, "batch", first, len(self)))
        return g

    # -------------------------------------------------------------- draws
    def _bits(self, n_per_sample: int, device) -> torch.Tensor:
        """(samples, n_per_sample) int64 with 64 random bits each: the next draw's raw bits.
        SplitMix64 streams: sample i's state is k_i = mix64(base ^ mix64(index_i)), element j's
        output mix64(k_i + (j + 1) * golden)."""
        base = _signed(mix_seed(self.seed, *self.key, "draw", self._draw))
        self._draw += 1
        k = mix64(mix64(self.index.to(device) + _GOLDEN) ^ base)
        steps = torch.arange(1, n_per_sample + 1, device=device, dtype=torch.int64) * _GOLDEN
        return mix64(k[:, None] + steps[None, :])

    def _check(self, shape):
        shape = tuple(int(s) for s in shape)
        if shape[0] != len(self):
            raise ValueError(f"SampleRNG: first dimension {shape[0]} != number of samples {len(self)}")
        return shape

    def rand(self, shape, device=None, dtype=None) -> torch.Tensor:
        """Uniform [0, 1) numbers of `shape` (first dimension = samples), 24-bit resolution."""
        shape = self._check(shape)
        m = math.prod(shape[1:])
        u = _srl(self._bits(m, device or "cpu"), 40).to(torch.float32) * (1.0 / (1 << 24))
        return u.reshape(shape).to(dtype or torch.float32)

    def randn(self, shape, device=None, dtype=None) -> torch.Tensor:
        """Standard normal numbers of `shape` (first dimension = samples), by Box-Muller."""
        shape = self._check(shape)
        m = math.prod(shape[1:])
        b = self._bits(2 * m, device or "cpu")
        u1 = (_srl(b[:, :m], 40) + 1).to(torch.float32) * (1.0 / (1 << 24))     # (0, 1]
        u2 = _srl(b[:, m:], 40).to(torch.float32) * (1.0 / (1 << 24))
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
        return z.reshape(shape).to(dtype or torch.float32)


def rand(shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """`torch.rand` that also accepts a `SampleRNG` as the generator (attacks call this)."""
    if isinstance(generator, SampleRNG):
        return generator.rand(shape, device=device, dtype=dtype)
    dev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=dev, dtype=dtype).to(device)


def randn(shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """`torch.randn` that also accepts a `SampleRNG` as the generator."""
    if isinstance(generator, SampleRNG):
        return generator.randn(shape, device=device, dtype=dtype)
    dev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=dev, dtype=dtype).to(device)
