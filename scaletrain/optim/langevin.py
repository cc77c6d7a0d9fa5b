"""Stochastic gradient Langevin dynamics (overdamped) and underdamped Langevin (BAOAB).

SGLD (Welling & Teh, ICML 2011), step size h = the group's lr, temperature T:

    theta <- theta - h * grad + sqrt(2 h T) * N(0, I)

Underdamped Langevin dq = p dt, dp = -grad U dt - gamma p dt + sqrt(2 gamma T) dW, integrated with
the BAOAB splitting (Leimkuhler & Matthews, "Rational construction of stochastic numerical methods
for molecular sampling", AMLR 2013; "Molecular Dynamics", Springer 2015, ch. 7):

    B: p <- p - (h/2) grad U(q)          A: q <- q + (h/2) p
    O: p <- c p + sqrt((1 - c^2) T) R,  c = exp(-gamma h)
    A: q <- q + (h/2) p                  B: p <- p - (h/2) grad U(q')

The closing B of step n and the opening B of step n+1 use the same gradient (at q_{n+1}), so they
are applied together at the start of step n+1: one gradient evaluation per step, positions
exactly those of BAOAB. With a varying step size the merged kick is (h_{n-1} + h_n)/2.
The stored momentum therefore lacks its closing half kick. T = 0 skips the noise: SGLD is then
plain gradient descent and BAOAB a deterministic damped (momentum) method.
Noise is drawn per element from `counter_rng` (see `base.py`), once per optimizer step, on the
fp32 tensors the client optimizer steps (ZeRO partitions), after DeepSpeed's gradient reduction.
"""
from __future__ import annotations

import math

import torch

from ..engine.optim import register_optimizer
from .base import LangevinBase
from .schedule import TemperatureSchedule

STREAM_SGLD, STREAM_O = 1, 2


class SGLD(LangevinBase):
    registry_name = "sgld"

    def __init__(self, params, lr: float, temperature: float = 0.0, weight_decay: float = 0.0, seed: int = 0,
                 schedule: TemperatureSchedule = None):
        schedule = schedule or TemperatureSchedule("constant", temperature)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), seed, schedule)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            h, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                k = self.step_count(p)
                T = self.temperature(k)
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                p.add_(g, alpha=-h)
                if T > 0:
                    p.add_(self.noise_like(p, k, STREAM_SGLD), alpha=math.sqrt(2.0 * h * T))
                self.state[p]["step"] = k + 1
                self.last_temperature = T
        return loss


class BAOAB(LangevinBase):
    registry_name = "baoab"

    def __init__(self, params, lr: float, temperature: float = 0.0, friction: float = 1.0,
                 weight_decay: float = 0.0, seed: int = 0, schedule: TemperatureSchedule = None):
        schedule = schedule or TemperatureSchedule("constant", temperature)
        super().__init__(params, dict(lr=lr, friction=friction, weight_decay=weight_decay), seed, schedule)

    def _kick(self, st, h: float) -> float:
        """Opening half kick, plus the previous step's closing half kick (same gradient)."""
        return 0.5 * h + (0.5 * st["h_prev"] if "h_prev" in st else 0.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            h, gamma, wd = group["lr"], group["friction"], group["weight_decay"]
            c = math.exp(-gamma * h)
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                k = self.step_count(p)
                T = self.temperature(k)
                if "momentum" not in st:
                    st["momentum"] = torch.zeros_like(p)
                v = st["momentum"]
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                v.add_(g, alpha=-self._kick(st, h))       # B (+ previous closing B)
                p.add_(v, alpha=0.5 * h)                  # A
                v.mul_(c)                                 # O
                if T > 0:
                    v.add_(self.noise_like(p, k, STREAM_O), alpha=math.sqrt((1.0 - c * c) * T))
                p.add_(v, alpha=0.5 * h)                  # A
                st["h_prev"] = h
                st["step"] = k + 1
                self.last_temperature = T
        return loss


def schedule_from(cfg) -> TemperatureSchedule:
    """The temperature schedule of an `optim.langevin` section."""
    return TemperatureSchedule(cfg.temperature_schedule, cfg.temperature, cfg.temperature_final,
                               cfg.cooling_start)


@register_optimizer("sgld")
def build_sgld(params, cfg):
    lc = cfg.langevin
    return SGLD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=int(lc.noise_seed),
                schedule=schedule_from(lc))


@register_optimizer("baoab")
def build_baoab(params, cfg):
    lc = cfg.langevin
    return BAOAB(params, lr=cfg.lr, friction=lc.friction, weight_decay=cfg.weight_decay,
                 seed=int(lc.noise_seed), schedule=schedule_from(lc))
