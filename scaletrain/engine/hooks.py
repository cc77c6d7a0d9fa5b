"""Trainer hooks: how code outside the loop (Ray reporting, Tune early stopping) observes it.

A hook is any object with some of these methods; missing ones are skipped.
All hooks run on every rank (Ray's `report` must be called by all workers);
rank-0-only work checks `trainer.engine.rank`.

    on_log(trainer, metrics: dict, step: int)          every train.log_every optimizer steps
    on_epoch_end(trainer, metrics: dict)               after each epoch (and its quick eval)
    on_checkpoint(trainer, path: str, metrics: dict)   after a checkpoint is complete on disk
    on_fit_end(trainer, result: dict)

Orchestration installs hooks for the duration of a run with `use_hooks(...)`,
so `run.py` builds its Trainer without knowing about Ray.
"""
from __future__ import annotations

import contextlib
from typing import List

_ACTIVE: List[object] = []


def active_hooks() -> List[object]:
    return list(_ACTIVE)


@contextlib.contextmanager
def use_hooks(*hooks):
    _ACTIVE.extend(hooks)
    try:
        yield
    finally:
        for h in hooks:
            _ACTIVE.remove(h)


def call(hooks, name: str, *args) -> None:
    for h in hooks:
        fn = getattr(h, name, None)
        if fn is not None:
            fn(*args)
