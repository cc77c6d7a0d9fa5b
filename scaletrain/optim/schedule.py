"""Temperature schedules for the Langevin optimizers: a pure function of the optimizer step.

The step size h follows the run's learning-rate schedule (`optim.schedule`, set on the param
groups by the engine); the temperature T follows this one. Cooling starts at fraction
`cooling_start` of the run and reaches `final` on the last optimizer step, so a run cooled to
T = 0 ends with deterministic steps (`docs/methods.md`).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

KINDS = ("constant", "linear", "cosine", "exponential", "step")


class TemperatureSchedule:
    def __init__(self, kind: str = "constant", initial: float = 0.0, final: float = 0.0,
                 cooling_start: float = 0.0, total_steps: Optional[int] = None):
        if kind not in KINDS:
            raise ValueError(f"unknown temperature schedule '{kind}'")
        self.kind, self.initial, self.final = kind, float(initial), float(final)
        self.cooling_start, self.total_steps = float(cooling_start), total_steps

    def __call__(self, step: int) -> float:
        if self.kind == "constant" or not self.total_steps:
            return self.initial
        frac = step / max(self.total_steps - 1, 1)
        if frac < self.cooling_start:
            return self.initial
        t = min((frac - self.cooling_start) / max(1.0 - self.cooling_start, 1e-12), 1.0)
        if self.kind == "step":
            return self.final
        if self.kind == "linear":
            return self.initial + (self.final - self.initial) * t
        if self.kind == "cosine":
            return self.final + (self.initial - self.final) * 0.5 * (1.0 + math.cos(math.pi * t))
        # exponential: geometric interpolation (final > 0 is checked at load)
        return self.initial * (self.final / self.initial) ** t if self.initial > 0 else 0.0

    def describe(self) -> Dict[str, object]:
        return {"kind": self.kind, "initial": self.initial, "final": self.final,
                "cooling_start": self.cooling_start, "total_steps": self.total_steps}
