"""Physics-inspired optimizers and local learning rules (docs/methods.md).

Langevin dynamics (`sgld`, `baoab`), constrained Langevin (`circle`, `orthogonal`), registered
into the engine's client-optimizer registry; a counter-based noise generator whose numbers do not
depend on the world size; Krotov-Hopfield Hebbian plasticity; nonlinear conjugate gradient (`ncg`).
"""
from . import constrained, langevin, ncg  # noqa: F401  (register the optimizers)
from .constrained import CircleBAOAB, OrthogonalBAOAB
from .langevin import BAOAB, SGLD
from .schedule import TemperatureSchedule

__all__ = ["SGLD", "BAOAB", "CircleBAOAB", "OrthogonalBAOAB", "TemperatureSchedule"]
