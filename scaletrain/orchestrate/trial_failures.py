"""How a sweep trial fails: a guard that ends a diverged run, and the one error line recorded.

    with use_hooks(FiniteLossGuard()): train_worker(cfg)          # single-worker trial
    run_with_ray(cfg, hooks=[FiniteLossGuard()])                   # in every Ray Train worker

A trial whose loss turns NaN/inf would otherwise train on and be recorded `ok` with garbage
metrics. The guard raises `FloatingPointError`; the trial records `failed` with `error_line`.
"""
from __future__ import annotations

import math

import torch

from ..engine.dist import all_reduce_sum


class FiniteLossGuard:
    """Trainer hook: a non-finite training loss ends the run with an error. It runs on every rank
    (a multi-worker trial passes it to its Ray Train workers): the logged loss is all-reduced, and
    at each epoch end the ranks all-reduce a flag for the weights and the quick eval's loss, so
    all ranks raise together (also when the epoch had fewer steps than train.log_every)."""

    def on_log(self, trainer, metrics, step):
        if not math.isfinite(float(metrics.get("loss", 0.0))):
            raise FloatingPointError(f"training loss is {metrics['loss']} at step {step} (non-finite: the "
                                     f"run diverged)")

    def on_epoch_end(self, trainer, metrics):
        params = [p.detach() for p in trainer.engine.module.parameters() if p.numel()]
        finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
        bad = not finite or not math.isfinite(float(metrics.get("val_loss", 0.0)))
        if all_reduce_sum([float(bad)])[0] > 0:
            raise FloatingPointError(f"training loss is non-finite: weights or eval loss are NaN/inf after "
                                     f"epoch {metrics.get('epoch', 0) + 1} of stage {metrics.get('stage', 0)} "
                                     f"(step {trainer.engine.global_step}; the run diverged)")


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
