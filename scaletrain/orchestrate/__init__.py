"""Orchestration: the layer above a run. It wraps `scaletrain.run` (one run in a process)
and is never imported by it.

    report = train(cfg)            # what `scaletrain train` calls
      ensemble.size > 1  -> an ensemble: K seeds as Ray Tune trials + ensemble evaluation (sweep.py)
      engine.launcher=ray -> one run as a Ray Train TorchTrainer (ray_train.py)
      else                -> scaletrain.run.train (local process or torchrun rank)
    run_sweep(path, overrides)     # `scaletrain sweep` (sweep.py)
    launch_main(argv)              # `scaletrain launch`: Ray Jobs submission (launch.py)
"""
from __future__ import annotations

from typing import Any, Dict


def train(cfg) -> Dict[str, Any]:
    from ..run import train as train_here
    from ..run import train_worker
    from ..runs import as_config
    cfg = as_config(cfg)
    if cfg.ensemble.size > 1:
        from .sweep import run_ensemble
        return run_ensemble(cfg)
    if cfg.engine.launcher == "ray":
        from .ray_train import run_with_ray
        return run_with_ray(cfg, worker=train_worker)
    return train_here(cfg)


def run_sweep(path: str, overrides=()):
    from .sweep import run_sweep as _run
    return _run(path, overrides)


__all__ = ["train", "run_sweep"]
