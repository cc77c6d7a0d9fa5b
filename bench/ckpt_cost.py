"""Checkpoint cost: seconds and bytes per checkpoint, against the time of a training step.

For each variant (the default job's model and PGD-AT method through the DeepSpeed engine, and a
~20M-parameter `wide_mlp` to show how the cost grows with the model) it trains on the real
digits shards and, interleaved in the same process, times:
  step    one optimizer step (attack + forward + backward + step), median over the run
  poll    the stop / time-checkpoint decision taken at every step boundary (preempt.py)
  ckpt    one full checkpoint (Trainer.save_checkpoint: DeepSpeed files, elastic/ state at
          ZeRO 1-3, model.pt, rank files, meta.json, atomic rename), median over --saves
and reports ckpt/step (how many steps one checkpoint costs) and the share of wall time spent
checkpointing at the default train.ckpt_every_minutes=30: ckpt / (30 x 60 s + ckpt).

    python bench/ckpt_cost.py [--steps 40] [--saves 5] [--json out.json]
    torchrun --nproc-per-node=2 bench/ckpt_cost.py      # 2 ranks: the poll is a gloo all-reduce
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from scaletrain.config import load_config  # noqa: E402
from scaletrain.data import prepare  # noqa: E402
from scaletrain.engine import Trainer, build_engine, cleanup, init_distributed  # noqa: E402
from scaletrain.engine import dist as D  # noqa: E402
from scaletrain.methods import create_method  # noqa: E402
from scaletrain.models import create_model  # noqa: E402
from scaletrain.run import _DataSource  # noqa: E402

VARIANTS = {
    "digits_cnn z0": ["engine.zero_stage=0"],
    "digits_cnn z2": ["engine.zero_stage=2"],
    "wide_mlp z0": ["engine.zero_stage=0", "model.name=wide_mlp", "model.width=4096", "method.name=standard"],
    "wide_mlp z2": ["engine.zero_stage=2", "model.name=wide_mlp", "model.width=4096", "method.name=standard"],
}


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def measure(name, overrides, root, data_root, steps, saves):
    cfg = load_config(None, [f"out_dir={root}", f"name={name.replace(' ', '_')}", f"data.root={data_root}",
                             "train.progress=false", "tracking.wandb=false", "train.log_every=0",
                             "train.keep_last=1", "engine.cpu_threads=1", *overrides])
    dist = init_distributed(cfg)
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    engine = build_engine(cfg, create_model(cfg.model), dist)
    method = create_method(cfg.method)
    trainer = Trainer(cfg, engine, method, _DataSource(cfg, dist.rank, dist.world_size),
                      run_dir=os.path.join(root, cfg.name))
    from scaletrain.engine.preempt import StopCoordinator
    trainer.stopper = StopCoordinator(trainer.run_dir, 30.0, 0, dist.rank, dist.world_size, handle_signals=False)
    step_t, poll_t, ckpt_t = [], [], []
    every = max(1, steps // saves)
    done, epoch = 0, 0
    engine.train()
    while done < steps:
        loader = trainer.data.train_loader(epoch, 0)
        for x, y in loader:
            D.barrier()
            t = time.perf_counter()
            trainer._train_step(method, x, y, 0, epoch)
            step_t.append(time.perf_counter() - t)
            D.barrier()  # time the decision itself, not the ranks' step skew
            t = time.perf_counter()
            trainer.stopper.poll()
            poll_t.append(time.perf_counter() - t)
            trainer.pos.batch += 1
            done += 1
            if done % every == 0:
                D.barrier()
                t = time.perf_counter()
                path = trainer.save_checkpoint(loader)
                ckpt_t.append(time.perf_counter() - t)
            if done >= steps:
                break
        epoch += 1
    size = _dir_bytes(path) if dist.rank == 0 else 0
    trainer.stopper.close()
    params = sum(p.numel() for p in engine.module.parameters())
    engine = trainer = None
    D.barrier()
    step, ckpt = statistics.median(step_t[3:] or step_t), statistics.median(ckpt_t)
    return {"variant": name, "params": params, "world_size": dist.world_size, "step_s": step,
            "poll_us": 1e6 * statistics.median(poll_t), "poll_share": statistics.median(poll_t) / step,
            "ckpt_s": ckpt, "ckpt_MB": size / 2 ** 20, "ckpt_in_steps": ckpt / step,
            "share_at_30min": ckpt / (1800.0 + ckpt)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--saves", type=int, default=5)
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    ap.add_argument("--json", default=None)
    ns = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "ckpt_cost_runs")  # shared by the ranks
    data_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "data", "digits")
    cfg = load_config(None, [f"data.root={data_root}", "train.progress=false"])
    if int(os.environ.get("RANK", 0)) == 0:
        prepare(cfg.data, progress=False)
    rows = []
    names = ns.only.split(",") if ns.only else list(VARIANTS)
    try:
        for name in names:
            rows.append(measure(name, VARIANTS[name], root, data_root, ns.steps, ns.saves))
    finally:
        D.barrier()
        if int(os.environ.get("RANK", 0)) == 0:
            shutil.rmtree(root, ignore_errors=True)
        cleanup()
    if int(os.environ.get("RANK", 0)) != 0:
        return
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"{'variant':16} {'params':>10} {'ranks':>5} {'step ms':>8} {'poll us':>8} {'ckpt ms':>8} "
          f"{'ckpt MB':>8} {'ckpt/step':>9} {'share@30min':>11}")
    for r in rows:
        print(f"{r['variant']:16} {r['params']:>10} {r['world_size']:>5} {1e3 * r['step_s']:>8.1f} "
              f"{r['poll_us']:>8.1f} {1e3 * r['ckpt_s']:>8.1f} {r['ckpt_MB']:>8.2f} {r['ckpt_in_steps']:>9.2f} "
              f"{100 * r['share_at_30min']:>10.4f}%")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
