"""Library entry points: `train(cfg) -> report`, `train_worker`, `load_run`.

`train` dispatches on `engine.launcher`; every rank then runs `train_worker`,
the one function that builds data, model, method and engine, trains, saves
the final weights, evaluates and tracks. Ray Train / Tune call `train_worker`
(or `train`) directly, so a sweep trial is an ordinary run.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from omegaconf import DictConfig

from .config import config_from_dict, load_config, save_config, to_dict
from .errors import ConfigError, UserError

ConfigLike = Union[DictConfig, Dict[str, Any]]


def _as_config(cfg: ConfigLike) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else config_from_dict(cfg)


def resolve_run_dir(cfg: DictConfig) -> Path:
    """runs/<name>; with resume=never an existing non-empty folder gets a suffix
    (-2, -3, ...) so a previous run's outputs are never overwritten."""
    base = Path(cfg.out_dir) / cfg.name
    if cfg.resume != "never" or not base.exists() or not any(base.iterdir()):
        return base
    i = 2
    while (Path(cfg.out_dir) / f"{cfg.name}-{i}").exists():
        i += 1
    return Path(cfg.out_dir) / f"{cfg.name}-{i}"


def train(cfg: ConfigLike) -> Dict[str, Any]:
    """Train and evaluate one run as the config says; returns the report."""
    cfg = _as_config(cfg)
    launcher = cfg.engine.launcher
    if launcher == "ray":
        from .orchestrate.ray_train import run_with_ray
        return run_with_ray(cfg)
    if launcher == "torchrun" and "WORLD_SIZE" not in os.environ:
        raise ConfigError("key 'engine.launcher': 'torchrun' means the ranks are started by torchrun: "
                          "torchrun --nproc-per-node=N -m scaletrain.cli train ... (docs/launch.md)")
    if launcher == "local" and cfg.engine.workers > 1 and "WORLD_SIZE" not in os.environ:
        raise ConfigError("key 'engine.workers': the local launcher runs one process; use "
                          "engine.launcher=ray, or start ranks with torchrun (see docs/launch.md)")
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
        tracker = Tracker(cfg.tracking, str(run_dir), to_dict(cfg), rank=dist.rank, name=run_dir.name)
        t0 = time.time()
        trainer = Trainer(cfg, engine, method, _DataSource(cfg, dist.rank, dist.world_size),
                          tracker=tracker, run_dir=str(run_dir), **(hooks or {}))
        history = trainer.fit()
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


def _set_cpu_threads(cfg, device_type: str = "cpu", local_ranks: int = 1) -> None:
    """Torch threads per rank on CPU (`engine.cpu_threads`; 0 = share the cores between
    the local ranks). The default is 1: the models this runs on CPU are small, and
    oversubscribed OpenMP threads slowed the default job 6x on a busy 2-core machine
    (docs/benchmarks.md). The same setting applies to `scaletrain eval`, so its
    numbers match the run's bit for bit."""
    import torch
    if device_type != "cpu":
        return
    n = cfg.engine.cpu_threads
    if n <= 0:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", local_ranks))
        n = max(1, (os.cpu_count() or 1) // max(local, 1))
    torch.set_num_threads(n)


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


def load_run(path: Union[str, Path], overrides: Sequence[str] = ()):
    """(config, state_dict, run_dir) of a run folder or a `model.pt` inside one."""
    import torch
    p = Path(path)
    if not p.exists():
        raise UserError(f"no such run folder or checkpoint: {p}")
    ckpt = p / "model.pt" if p.is_dir() else p
    run_dir = ckpt.parent
    cfg_file = run_dir / "config.yaml"
    if not ckpt.exists():
        raise UserError(f"{p}: no model.pt (is this a finished run folder?)")
    if not cfg_file.exists():
        raise UserError(f"{run_dir}: config.yaml not found next to the checkpoint")
    cfg = load_config(str(cfg_file), overrides)
    _set_cpu_threads(cfg)  # the run's thread count: conv reductions, hence numbers, depend on it
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a weights file
        raise UserError(f"{ckpt}: cannot be read as a weights-only state_dict ({type(e).__name__}: {e})") from None
    return cfg, state, run_dir
