"""``eval_main(argv) -> exit code``: the evaluation command with everything the suite offers.

    eval_main(["runs/default"])                                   # one run (folder or model.pt)
    eval_main(["runs/a", "runs/b", "runs/c", "--out", "ens"])     # an ensemble of three runs
    eval_main(["runs/default", "--ranks", "2", "eval.autoattack=true"])   # 2 local gloo ranks

Each PATH is a run folder (``config.yaml`` + ``model.pt``) or a ``model.pt`` inside one;
``key=value`` overrides apply to every run's config. The evaluation set is the test split
of the first run's data section, read in full and in order by every rank (the suite
shards it by global batch). Outputs go to ``--out`` (default ``<first run>/eval``):
report.json, report.md, robustness.png, and the W&B run (``tracking`` section of the
first run). An interrupted evaluation resumes from ``<out>/eval_state.json`` (per rank)
unless ``--fresh``. User mistakes print one line and return 2.
"""
from __future__ import annotations

import argparse
import math
import os
import socket
import sys
from typing import Any, Dict, List, Optional, Sequence

from ..errors import UserError


def _parser():
    p = argparse.ArgumentParser(prog="scaletrain eval", description="Robustness evaluation of trained runs.")
    p.add_argument("args", nargs="+", metavar="PATH|key=value",
                   help="run folders / model.pt files, then config overrides key=value")
    p.add_argument("--out", default=None, help="output folder (default: FIRST_RUN/eval or FIRST_RUN/eval-ensemble)")
    p.add_argument("--ranks", type=int, default=1, help="evaluate with N local processes (gloo), default 1")
    p.add_argument("--fresh", action="store_true", help="ignore a saved evaluation state (no resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")
    return p


def _split(args: Sequence[str]):
    paths = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if not paths:
        raise UserError("scaletrain eval: give at least one run folder or model.pt")
    return paths, overrides


def _load(paths, overrides):
    from ..models import model_from_state
    from ..runs import load_run
    runs = []
    for p in paths:
        cfg, state, run_dir = load_run(p, overrides)
        runs.append((cfg, model_from_state(cfg.model, state, source=str(p)), run_dir))
    return runs


def evaluate_paths(paths: Sequence[str], overrides: Sequence[str] = (), *, out: Optional[str] = None,
                   rank: int = 0, world_size: int = 1, progress: bool = True, resume: bool = True,
                   wandb: bool = True) -> Dict[str, Any]:
    """Evaluate one run or an ensemble of runs; rank 0 writes the report. Returns the report."""
    from ..data import eval_loader
    from .ensemble import evaluate_ensemble
    from .report import format_table, write_report
    from .suite import evaluate_model

    runs = _load(paths, overrides)
    cfg0, _, run_dir0 = runs[0]
    out = out or os.path.join(str(run_dir0), "eval" if len(runs) == 1 else "eval-ensemble")
    os.makedirs(out, exist_ok=True)
    state = os.path.join(out, "eval_state.json")
    if not resume:
        for f in (state, f"{state}.rank{rank}"):
            if os.path.exists(f):
                os.remove(f)

    class _Loader:   # re-iterable full test stream (every rank reads all of it, in order)
        def __iter__(self):
            return iter(eval_loader(cfg0.data, "test", batch_size=cfg0.eval.batch_size))

    if len(runs) == 1:
        report = evaluate_model(runs[0][1], _Loader(), cfg0.eval, device="cpu", rank=rank, world_size=world_size,
                                progress=progress, state_file=state)
    else:
        report = evaluate_ensemble([m for _, m, _ in runs], _Loader(), cfg0.eval, names=[str(p) for p in paths],
                                   device="cpu", rank=rank, world_size=world_size, progress=progress,
                                   state_file=state)
    if rank == 0:
        write_report(report, out)
        if wandb and cfg0.tracking.wandb:
            from ..config import to_dict
            from ..track import Tracker
            tracker = Tracker(cfg0.tracking, out, to_dict(cfg0), name=f"{os.path.basename(str(run_dir0))}-eval",
                              job_type="eval")
            if "ensemble" in report:   # an ensemble: the averaged-logits model's curves, plus member mean/std
                tracker.log_report(report["ensemble"], prefix="eval/ensemble")
                tracker.log({f"eval/members_{stat}/{k}": float(v) for stat in ("mean", "std")
                             for k, v in report[stat].items() if math.isfinite(v)})
            else:
                tracker.log_report(report)
            tracker.finish()
        print(format_table(report), flush=True)
        print(f"outputs: {out}", flush=True)
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world_size, port, paths, overrides, kw):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        evaluate_paths(paths, overrides, rank=rank, world_size=world_size, **kw)
    finally:
        dist.destroy_process_group()


def eval_main(argv: Optional[List[str]] = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        paths, overrides = _split(ns.args)
        if ns.ranks < 1:
            raise UserError(f"--ranks must be >= 1, got {ns.ranks}")
        kw = dict(out=ns.out, progress=not ns.no_progress, resume=not ns.fresh, wandb=not ns.no_wandb)
        if ns.ranks == 1:
            evaluate_paths(paths, overrides, **kw)
        else:
            import torch.multiprocessing as mp
            _load(paths, overrides)          # fail fast, in this process, on a bad path or override
            mp.spawn(_rank_worker, args=(ns.ranks, _free_port(), paths, overrides, kw), nprocs=ns.ranks)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(eval_main())
