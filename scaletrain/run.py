"""One run in this process: `train(cfg) -> report` (local launcher or a torchrun rank) and
`train_worker`, one rank of any run.

`train_worker` is the one function that builds data, model, method and engine, trains,
saves the final weights, evaluates and tracks. The orchestration layer above it
(`scaletrain.orchestrate.train`: Ray Train runs, Tune sweeps, ensembles) calls
`train_worker` in its workers, so a sweep trial is an ordinary run. This module never
imports `orchestrate/`; shared run-folder helpers live in `runs.py`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig

from .config import save_config, to_dict
from .errors import ConfigError, Preempted
from .evaluate.quick import quick_eval_fn
from .runs import ConfigLike, as_config as _as_config, load_run, resolve_run_dir, set_cpu_threads as _set_cpu_threads

__all__ = ["train", "train_worker", "evaluate_checkpoint", "load_run", "resolve_run_dir"]


def train(cfg: ConfigLike) -> Dict[str, Any]:
    """Train and evaluate one run in this process (engine.launcher local or torchrun); returns
    the report. Ray runs and ensembles go through `scaletrain.orchestrate.train(cfg)`."""
    cfg = _as_config(cfg)
    launcher = cfg.engine.launcher
    if launcher == "ray" or cfg.ensemble.size > 1:
        raise ConfigError("key 'engine.launcher'/'ensemble.size': Ray runs and ensembles are orchestrated: "
                          "call scaletrain.orchestrate.train(cfg) (what `scaletrain train` does)")
    if launcher == "torchrun" and "WORLD_SIZE" not in os.environ:
        raise ConfigError("key 'engine.launcher': 'torchrun' means the ranks are started by torchrun: "
                          "torchrun --nproc-per-node=N -m scaletrain.cli train ... (docs/launch.md)")
    if launcher == "local" and cfg.engine.workers > 1 and "WORLD_SIZE" not in os.environ:
        raise ConfigError("key 'engine.workers': the local launcher runs one process; use "
                          "engine.launcher=ray, or start ranks with torchrun (see docs/launch.md)")
    if cfg.resume != "never" and os.environ.get("RANK", "0") == "0":  # (never: a fresh folder)
        from .engine.preempt import clear_stop
        clear_stop(str(resolve_run_dir(cfg)))  # a stop request of an earlier, interrupted launch
    return train_worker(cfg)


class _DataSource:
    """What the trainer asks of the data layer, bound to this rank."""

    def __init__(self, cfg: DictConfig, rank: int, world_size: int):
        from .engine import plan_stages
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.stages = plan_stages(cfg)

    def train_loader(self, epoch: int, stage: int = 0):
        from .data import train_loader
        image_size = self.stages[stage].image_size
        return train_loader(self.cfg.data, rank=self.rank, world_size=self.world_size, epoch=epoch,
                            image_size=image_size, seed=self.cfg.data.seed)


def _check_model_matches_data(cfg: DictConfig, info: Dict[str, Any]) -> None:
    from .engine import plan_stages
    from .models import check_data
    c, native = info["image_shape"][0], info["image_shape"][-1]
    evaluated = cfg.data.augment.resize or native
    sizes = {evaluated} | {s.image_size or evaluated for s in plan_stages(cfg)}
    for side in sorted(sizes):
        check_data(cfg.model, side, c)
    if cfg.model.num_classes < info["num_classes"]:
        raise ConfigError(f"key 'model.num_classes': {cfg.model.num_classes}, but the data has "
                          f"{info['num_classes']} classes")


def train_worker(cfg: ConfigLike, run_dir: Optional[Union[str, Path]] = None,
                 hooks: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One rank of a training run (local process, torchrun rank or Ray worker)."""
    import torch

    from .data import dataset_info, prepare
    from .engine import Trainer, build_engine, init_distributed
    from .methods import create_method
    from .models import create_model
    from .track import Tracker

    cfg = _as_config(cfg)
    dist = init_distributed(cfg)
    _set_cpu_threads(cfg, dist.device.type, dist.world_size)
    try:
        run_dir = Path(run_dir) if run_dir is not None else _shared_run_dir(cfg, dist)
        if dist.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, str(run_dir / "config.yaml"))
            prepare(cfg.data, progress=cfg.train.progress)
        dist.barrier()  # the shards exist before any rank reads them
        info = dataset_info(cfg.data)
        _check_model_matches_data(cfg, info)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = create_model(cfg.model)
        method = create_method(cfg.method)
        engine = build_engine(cfg, model, dist)
        tracker = Tracker(cfg.tracking, str(run_dir), to_dict(cfg), rank=dist.rank, name=run_dir.name,
                          job_type=cfg.tracking.job_type)
        t0 = time.time()
        trainer = Trainer(cfg, engine, method, _DataSource(cfg, dist.rank, dist.world_size),
                          tracker=tracker, run_dir=str(run_dir), eval_fn=quick_eval_fn(cfg), **(hooks or {}))
        try:
            history = trainer.fit()
        except Preempted as stop:
            _record_preemption(stop, run_dir, tracker, dist.rank)
            raise
        train_seconds = time.time() - t0
        summary_fn = getattr(engine.optimizer, "summary", None)  # Langevin: temperature schedule, violations
        optim_summary = summary_fn() if callable(summary_fn) else None  # collective: every rank

        report: Dict[str, Any] = {}
        if dist.rank == 0:
            # evaluate what was saved, through the same path as `scaletrain eval`
            state = torch.load(history["model_path"], map_location="cpu", weights_only=True)
            report = evaluate_checkpoint(cfg, state, progress=cfg.train.progress)
            report["train"] = {"seconds": round(train_seconds, 3), "world_size": dist.world_size,
                               "global_step": history.get("global_step"),
                               "final": history.get("train", {}), "best": history.get("best", {}),
                               "resumed_from": history.get("resumed_from")}
            summarize = getattr(method, "summarize", None)  # hebbian: filter grid + unconverged fraction
            if callable(summarize):
                report["hebbian"] = summarize(state, str(run_dir), model)
                tracker.log_image("hebbian/filters", report["hebbian"]["filters_png"], step=engine.global_step)
                tracker.log({f"hebbian/{k}": v for k, v in report["hebbian"].items()
                             if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=engine.global_step)
            if optim_summary:
                report["optimizer"] = optim_summary
                tracker.log({f"optim/{k}": v for k, v in optim_summary.items() if isinstance(v, (int, float))},
                            step=engine.global_step)
            _finish_report(report, run_dir, tracker, step=engine.global_step)
        tracker.finish()
        return report
    finally:
        from .engine import cleanup
        cleanup()


def _record_preemption(stop: Preempted, run_dir: Path, tracker, rank: int) -> None:
    """The interruption goes on record: interrupted.json, one console line, W&B (rank 0)."""
    from .engine.preempt import record_interruption
    if rank == 0:
        record_interruption(str(run_dir), stop.reason, stop.step, stop.checkpoint)
        print(f"scaletrain: {stop}", flush=True)
        tracker.log({"train/preempted": 1}, step=stop.step)
    tracker.finish()


def _shared_run_dir(cfg: DictConfig, dist) -> Path:
    """Rank 0 picks the run folder; the others receive its choice."""
    if dist.world_size == 1:
        return resolve_run_dir(cfg)
    import torch.distributed as tdist
    obj: List[Optional[str]] = [str(resolve_run_dir(cfg)) if dist.rank == 0 else None]
    tdist.broadcast_object_list(obj, src=0)
    return Path(obj[0])


def evaluate_checkpoint(cfg: DictConfig, state_dict, *, progress: bool = True,
                        state_file: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate weights on the test split with a fresh model, through the same path as
    `scaletrain eval` (evaluate/cli.py), so both give identical numbers. One process:
    sharded evaluation is `scaletrain eval --ranks N`."""
    import torch

    from .data import eval_loader
    from .evaluate import evaluate_model
    from .models import model_from_state

    model = model_from_state(cfg.model, state_dict)
    loader = eval_loader(cfg.data, "test", batch_size=cfg.eval.batch_size)
    with torch.random.fork_rng(devices=[]):
        return evaluate_model(model, loader, cfg.eval, device="cpu", progress=progress, state_file=state_file)


def _finish_report(report: Dict[str, Any], out_dir: Path, tracker, step: Optional[int] = None) -> None:
    from .evaluate import format_table, write_report
    write_report(report, str(out_dir))
    if tracker is not None:
        tracker.log_report(report, step=step)
    print(format_table(report), flush=True)
    print(f"outputs: {out_dir}", flush=True)
