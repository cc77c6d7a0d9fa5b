"""Guards that end a run which can no longer produce anything useful.

`FiniteLossGuard` is a trainer hook: a NaN/inf training loss (or NaN/inf weights or quick-eval
loss at an epoch end) raises `FloatingPointError` on every rank together. The trainer installs it
unless `train.stop_on_nonfinite=false`; sweeps also pass it to their Ray Train workers so a diverged
trial is recorded `failed` (orchestrate/trial_failures.py). The CLI turns the error into one line.
"""
from __future__ import annotations

import math

import torch

from .dist import all_reduce_sum


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
