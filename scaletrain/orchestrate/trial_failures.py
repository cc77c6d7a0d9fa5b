"""How a sweep trial fails: the guard that ends a diverged run (engine/guards.py, re-exported
here; sweeps install it even when a trial's config sets train.stop_on_nonfinite=false), and the one
error line recorded.

    with use_hooks(FiniteLossGuard()): train_worker(cfg)          # single-worker trial
    run_with_ray(cfg, hooks=[FiniteLossGuard()])                   # in every Ray Train worker

A trial whose loss turns NaN/inf would otherwise train on and be recorded `ok` with garbage
metrics. The guard raises `FloatingPointError`; the trial records `failed` with `error_line`.
"""
from __future__ import annotations

from ..engine.guards import FiniteLossGuard

__all__ = ["FiniteLossGuard", "error_line"]


def error_line(e: BaseException) -> str:
    """One line naming the error. A multi-worker trial's `TrainingFailedError` wraps the worker's
    traceback: the line of the worker's own exception is the informative one."""
    lines = [ln.strip() for ln in f"{type(e).__name__}: {e}".splitlines() if ln.strip()]
    if type(e).__module__.startswith("ray."):
        for ln in reversed(lines[1:]):
            head = ln.split(":", 1)[0]
            if head.endswith(("Error", "Exception")) and " " not in head and "TrainingFailed" not in head:
                return ln
    return lines[0] if lines else type(e).__name__
