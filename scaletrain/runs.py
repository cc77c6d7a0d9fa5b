"""Run folders: where a run writes (`resolve_run_dir`), how a finished one is read back
(`load_run`), and the per-rank CPU thread count both apply.

A low module: `run.py` (training), `orchestrate/` (Ray Train, Tune sweeps) and `evaluate/cli.py`
(`scaletrain eval`) all import it, and it imports none of them, so the orchestration layer
wraps runs without reaching back into `run.py`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Sequence, Union

from omegaconf import DictConfig

from .config import config_from_dict, load_config
from .errors import UserError

ConfigLike = Union[DictConfig, Dict[str, Any]]
CLAIM = ".scaletrain-run"   # marker file: the run folder belongs to one run


def as_config(cfg: ConfigLike) -> DictConfig:
    return cfg if isinstance(cfg, DictConfig) else config_from_dict(cfg)


def _claim(folder: Path) -> bool:
    """Atomically take `folder` for a new run: create it and its claim marker with O_EXCL.

    Two runs started at once with the same name (sweep trials, parallel jobs) cannot both
    win: exactly one `open(O_CREAT | O_EXCL)` succeeds. A folder that already holds a run
    (other files besides the marker) is never taken."""
    if folder.exists() and any(p.name != CLAIM for p in folder.iterdir()):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return [p.name for p in folder.iterdir()] == [CLAIM]


def resolve_run_dir(cfg: DictConfig) -> Path:
    """runs/<name>; with resume=never an existing non-empty folder gets a suffix
    (-2, -3, ...) so a previous run's outputs are never overwritten. With resume=never the
    folder is claimed atomically (no check-then-create race between concurrent runs)."""
    base = Path(cfg.out_dir) / cfg.name
    if cfg.resume != "never":
        return base
    i = 1
    while True:
        cand = base if i == 1 else Path(cfg.out_dir) / f"{cfg.name}-{i}"
        if _claim(cand):
            return cand
        i += 1


def set_cpu_threads(cfg, device_type: str = "cpu", local_ranks: int = 1) -> None:
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
    set_cpu_threads(cfg)  # the run's thread count: conv reductions, hence numbers, depend on it
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a weights file
        raise UserError(f"{ckpt}: cannot be read as a weights-only state_dict ({type(e).__name__}: {e})") from None
    return cfg, state, run_dir
