"""Client optimizers (a registry) and learning-rate schedules.

Optimizers are built by us and handed to DeepSpeed as *client optimizers*
(`deepspeed.initialize(optimizer=...)`, https://deepspeed.readthedocs.io/en/latest/initialize.html),
never from DeepSpeed's config block: the config `AdamW` JIT-builds a fused op on CPU
(GUIDE pitfall), and our own `torch.optim.Optimizer` subclasses (Langevin,
constrained, ...) must plug in the same way. Register one with::

    @register_optimizer("sgld")
    def build_sgld(params, cfg):          # cfg = the `optim` config section
        return SGLD(params, lr=cfg.lr, **cfg.kwargs)

The learning rate is a pure function of the optimizer step (`LRSchedule`), set
on the param groups by `Engine.step()` before each optimizer step. Its only
state is the step counter, which checkpoints already hold, so resuming is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import torch

from ..registry import Registry

OPTIMIZERS = Registry("optimizer", "optim.name")
register_optimizer = OPTIMIZERS.register


@register_optimizer("sgd")
def _sgd(params, cfg):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           **dict(cfg.kwargs))


@register_optimizer("adam")
def _adam(params, cfg):
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            **dict(cfg.kwargs))


@register_optimizer("adamw")
def _adamw(params, cfg):
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             **dict(cfg.kwargs))


def param_groups(model: torch.nn.Module):
    """The model's parameters for the optimizer: one group, plus a group with `weight_decay` 0 for
    the parameters a module lists in its `no_weight_decay` attribute (names of its own parameters,
    timm's convention; e.g. PNI's noise scales). Without such parameters: the plain parameter list."""
    skip = set()
    for m in model.modules():
        for name in getattr(m, "no_weight_decay", ()) or ():
            p = getattr(m, name, None)
            if isinstance(p, torch.nn.Parameter):
                skip.add(id(p))
    params = [p for p in model.parameters()]
    if not skip:
        return params
    return [{"params": [p for p in params if id(p) not in skip]},
            {"params": [p for p in params if id(p) in skip], "weight_decay": 0.0}]


def create_optimizer(cfg, params) -> torch.optim.Optimizer:
    """Build the optimizer named by `cfg.name` (the `optim` section) over `params`."""
    _register_builtins()
    opt = OPTIMIZERS.create(cfg.name, params, cfg)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"optimizer builder '{cfg.name}' returned {type(opt).__name__}, "
                        "not a torch.optim.Optimizer")
    return opt


def requires_closure(name: str) -> bool:
    """Whether the registered optimizer `name` steps with a closure (`builder.requires_closure`)."""
    _register_builtins()
    return name in OPTIMIZERS and bool(getattr(OPTIMIZERS.get(name), "requires_closure", False))


def _register_builtins() -> None:
    from .. import optim  # noqa: F401  (Langevin, constrained, ... register themselves)


def available() -> List[str]:
    _register_builtins()
    return OPTIMIZERS.names()


@dataclass
class Segment:
    """One stage's share of the schedule: `steps` optimizer steps at peak `lr`."""
    steps: int
    lr: float


def _anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class LRSchedule:
    """Warmup then constant / cosine / linear / onecycle, restarted at every stage.

    `segments` lists each stage's optimizer steps and peak learning rate; warmup
    (`warmup_steps`) applies at the start of every stage. `onecycle` follows
    `torch.optim.lr_scheduler.OneCycleLR` (cosine up from lr/div_factor over
    `pct_start`, then cosine down to lr/(div_factor*final_div_factor)).
    """

    def __init__(self, kind: str, segments: Sequence[Segment], warmup_steps: int = 0,
                 pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4,
                 min_lr: float = 0.0):
        self.kind, self.segments, self.warmup = kind, list(segments), int(warmup_steps)
        self.pct_start, self.div, self.final_div, self.min_lr = pct_start, div_factor, final_div_factor, min_lr

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.segments)

    def locate(self, step: int):
        """(segment index, step within segment) of a global optimizer step."""
        for i, seg in enumerate(self.segments):
            if step < seg.steps or i == len(self.segments) - 1:
                return i, min(step, max(seg.steps - 1, 0))
            step -= seg.steps
        return 0, 0

    def __call__(self, step: int) -> float:
        if not self.segments:
            raise RuntimeError("LRSchedule has no segments")
        i, s = self.locate(step)
        seg = self.segments[i]
        base, n = seg.lr, max(seg.steps, 1)
        if self.kind == "onecycle":  # same phase arithmetic as torch's OneCycleLR
            up_end = (self.warmup if self.warmup > 0 else self.pct_start * n) - 1
            lo, end = base / self.div, base / (self.div * self.final_div)
            if s <= up_end:
                return _anneal(lo, base, s / up_end if up_end > 0 else 1.0)
            return _anneal(base, end, (s - up_end) / max(n - 1 - up_end, 1e-12))
        if s < self.warmup:
            return base * (s + 1) / (self.warmup + 1)
        t = (s - self.warmup) / max(n - self.warmup, 1)
        if self.kind == "constant":
            return base
        if self.kind == "cosine":
            return self.min_lr + (base - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "linear":
            return self.min_lr + (base - self.min_lr) * (1 - t)
        raise ValueError(f"unknown schedule {self.kind}")
