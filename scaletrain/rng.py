"""Random numbers keyed by global sample index: the same numbers for the same sample at any world size.

A training step sees a micro-batch of a global batch. With data parallelism the micro-batch
that rank r holds is a slice of the global batch; with gradient accumulation on one rank the
same slice is a micro-batch of that rank. Random draws made per micro-batch from a shared
generator would therefore differ between 1 and N ranks. `SampleRNG` gives each sample its own
numbers, a function of (seed, key..., global sample index, draw number) only, so a sample gets
the same random start / noise / box wherever it is processed.

How: global sample indices fall in aligned chunks of `CHUNK` (16) consecutive indices. For a
draw of rows of shape S, chunk c's rows are one `torch.rand/randn((CHUNK, *S))` from a generator
seeded by a hash of (seed, key..., c, draw number), and sample i takes row i mod CHUNK of its
chunk. Any subset of the samples, in any order, on any rank, gets the same rows. A micro-batch
of B contiguous samples seeds about B/16 + 1 generators instead of B (an MNIST batch of 100:
0.3 ms instead of 1.1 ms a draw, `python bench/rng_cost.py`); it draws at most two chunks'
worth of rows it does not use.

    rng = SampleRNG(seed, index, "step", 12)     # index: LongTensor of global sample indices
    u = rng.rand(x.shape, device=x.device)        # row i depends only on (seed, key, index[i], draw)
    sub = rng.fork("probe")                       # an independent stream for another use
    part = rng.subset(mask)                       # the same per-sample streams for a subset

Each call to `rand`/`randn` advances a draw counter, so calling the same sequence of draws
gives the same numbers; different calls give independent numbers. Numbers are drawn on the
CPU (one small generator per chunk) and moved to `device`: cheap for the per-batch draws of
training (attack starts, noise, mixing), exact across CPU/GPU and world sizes.

Model layers that draw random numbers in training (DropBlock, the VIB head, the SDE block)
derive from `SampleKeyedLayer`. Before each training forward the trainer binds the step's
streams to them with `bind_sample_rng(model, rng)` (each layer gets `rng.fork("layer", name)`,
its qualified module name: layers draw independent numbers), and unbinds them after the step.
A bound layer draws row i from sample i's stream; an unbound one (plain PyTorch use outside the
trainer) draws from the global torch RNG (the SDE block: its own seeded generator). Whether a
layer draws in eval mode is its own choice (DropBlock: identity, VIB: its mean, the SDE: only
with test_noise).
Plain PyTorch: attacks, methods, models and the trainer import it; it imports nothing of ours.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Optional, Sequence

import torch
from torch import nn


CHUNK = 16   # consecutive global sample indices that share one generator per draw (part of the streams' definition)


def mix_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints and strings (stable across processes and versions)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        if isinstance(p, str):
            h.update(b"s" + p.encode())
        else:
            h.update(b"i" + struct.pack("<q", int(p)))
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


class SampleRNG:
    """Per-sample random streams (see the module docstring)."""

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
    def _draw_rows(self, fn, shape: Sequence[int], device, dtype) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if shape[0] != len(self):
            raise ValueError(f"SampleRNG: first dimension {shape[0]} != number of samples {len(self)}")
        draw = self._draw
        self._draw += 1
        if not len(self):
            return torch.empty(shape, dtype=dtype or torch.float32, device=device or "cpu")
        chunk = torch.div(self.index, CHUNK, rounding_mode="floor")
        chunks, which = torch.unique(chunk, return_inverse=True)
        g = torch.Generator()
        blocks = []
        for c in chunks.tolist():
            g.manual_seed(mix_seed(self.seed, *self.key, "chunk", c, draw))
            blocks.append(fn((CHUNK, *shape[1:]), generator=g, dtype=torch.float32))
        out = torch.stack(blocks)[which, self.index - chunk * CHUNK]
        return out.to(device=device or "cpu", dtype=dtype or torch.float32)

    def rand(self, shape, device=None, dtype=None) -> torch.Tensor:
        """Uniform [0, 1) numbers of `shape` (first dimension = samples)."""
        return self._draw_rows(torch.rand, shape, device, dtype)

    def randn(self, shape, device=None, dtype=None) -> torch.Tensor:
        """Standard normal numbers of `shape` (first dimension = samples)."""
        return self._draw_rows(torch.randn, shape, device, dtype)


class SampleKeyedLayer:
    """Mixin of model layers that draw random numbers in training (put it before nn.Module).

    `sample_rand` / `sample_randn` draw fp32 numbers of `shape` (first dimension = the batch):
    from the bound per-sample streams when the batch is the bound samples; for a forward on other
    rows (a subset or a concatenation of the batch) from one generator keyed by the bound streams,
    the row count and the draw number (the same on 1 and N ranks, whose micro-batches hold the same
    samples); from the global torch RNG when nothing is bound."""

    _sample_rng: Optional[SampleRNG] = None

    def bind_rng(self, rng: Optional[SampleRNG]) -> None:
        self._sample_rng = rng

    @property
    def rng_bound(self) -> bool:
        """Whether the trainer bound per-sample streams (inside a training step)."""
        return self._sample_rng is not None

    def _sample_draw(self, fn, shape, device) -> torch.Tensor:
        rng, shape = self._sample_rng, tuple(int(s) for s in shape)
        if rng is None:
            return fn(shape, device=device, dtype=torch.float32)
        if shape[0] == len(rng):
            return rng._draw_rows(fn, shape, device, torch.float32)
        g = rng.generator("rows", shape[0], "draw", rng._draw)
        rng._draw += 1
        return fn(shape, generator=g, dtype=torch.float32).to(device)

    def sample_rand(self, shape, device=None) -> torch.Tensor:
        return self._sample_draw(torch.rand, shape, device)

    def sample_randn(self, shape, device=None) -> torch.Tensor:
        return self._sample_draw(torch.randn, shape, device)


def bind_sample_rng(model: nn.Module, rng: Optional[SampleRNG]) -> int:
    """Bind `rng.fork("layer", name)` to every `SampleKeyedLayer` of `model` (None unbinds);
    returns how many layers there are."""
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, SampleKeyedLayer):
            m.bind_rng(None if rng is None else rng.fork("layer", name))
            n += 1
    return n


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
