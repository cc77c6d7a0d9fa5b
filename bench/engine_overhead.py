"""Engine overhead: scaletrain's engine + trainer vs a plain PyTorch loop, and ZeRO memory.

1. Throughput (world size 1, CPU): the default recipe (the schema defaults: digits CNN, PGD
   adversarial training, Adam, cosine) on the same in-memory batches, in the same process:
     plain    a hand-written loop: attack, forward, backward, Adam step, scheduler step
     torch    scaletrain Trainer on engine.backend=torch
     ds-z0/1/2  scaletrain Trainer on DeepSpeed ZeRO 0/1/2
   Each measurement is a full `fit()` (logging every 10 steps, the stage-end checkpoint and the
   final model.pt included). Rounds interleave the variants and medians are reported, both as
   wall-clock steps/s and as steps per CPU-second of this process (`time.process_time`, with
   one torch thread): on a shared machine the CPU-time figure is the one other processes do not
   distort.
2. Memory (2 ranks, gloo): per-rank bytes of parameters + fp32 master copies + optimizer state for
   `wide_mlp` (~20M parameters, Adam) under ZeRO 0-3, counted over unique tensor storages that
   the engine holds (DeepSpeed's flat buffers included; gradient buckets excluded).

    python bench/engine_overhead.py [--steps 150] [--rounds 3] [--skip-memory] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from scaletrain.config import load_config  # noqa: E402
from scaletrain.models import create_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def batches(n_steps, bs=64, seed=0):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < n_steps:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - bs + 1, bs):
            out.append((x[perm[i:i + bs]].contiguous(), y[perm[i:i + bs]].contiguous()))
    return out[:n_steps]


class ListData:
    def __init__(self, data):
        self.data = data

    def train_loader(self, epoch, stage):
        return self.data


def recipe(tmp, *over):
    return load_config(None, [f"out_dir={tmp}", "name=bench", "train.epochs=1", "train.progress=false",
                              "tracking.wandb=false", "train.log_every=10", *over])


def run_plain(data, cfg):
    from scaletrain.attacks import attack_from_config
    torch.manual_seed(0)
    model = create_model(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(data))
    attack = attack_from_config(cfg.method.attack)
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for x, y in data:
        x_adv = attack(model, x, y)
        loss = F.cross_entropy(model(x_adv), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return len(data) / (time.perf_counter() - t0), len(data) / (time.process_time() - c0)


def run_scaletrain(data, cfg):
    from scaletrain.engine import Trainer, build_engine, init_distributed
    from scaletrain.methods import create_method
    dist = init_distributed(cfg)
    torch.manual_seed(0)
    engine = build_engine(cfg, create_model(cfg.model), dist)
    trainer = Trainer(cfg, engine, create_method(cfg.method), ListData(data), run_dir=cfg.out_dir + "/run")
    t0, c0 = time.perf_counter(), time.process_time()
    res = trainer.fit()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    assert res["global_step"] == len(data)
    return len(data) / dt, len(data) / dc


def throughput(steps, rounds):
    data = batches(steps)
    variants = {"plain": None, "torch": ["engine.backend=torch"],
                "ds-z0": ["engine.backend=deepspeed", "engine.zero_stage=0"],
                "ds-z1": ["engine.backend=deepspeed", "engine.zero_stage=1"],
                "ds-z2": ["engine.backend=deepspeed", "engine.zero_stage=2"]}
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    run_scaletrain(data[:5], recipe(tempfile.mkdtemp(), "engine.backend=deepspeed"))  # warm-up: imports, JIT op
    run_plain(data[:5], recipe(tempfile.mkdtemp()))
    for r in range(rounds):
        for name, over in variants.items():
            with tempfile.TemporaryDirectory() as tmp:
                cfg = recipe(tmp, *(over or []))
                w, c = run_plain(data, cfg) if over is None else run_scaletrain(data, cfg)
            wall[name].append(w)
            cpu[name].append(c)
            print(f"round {r + 1} {name:6s} {w:7.2f} steps/s wall, {c:7.2f} steps per CPU-second", flush=True)
    c = recipe("/tmp")
    recipe_desc = {"model": c.model.name, "width": c.model.width, "batch": c.data.batch_size,
                   "method": c.method.name, "attack_steps": c.method.attack.steps, "eps": c.method.attack.eps,
                   "optim": c.optim.name, "lr": c.optim.lr, "schedule": c.optim.schedule}
    print("recipe:", recipe_desc, flush=True)
    med_w = {k: statistics.median(v) for k, v in wall.items()}
    med_c = {k: statistics.median(v) for k, v in cpu.items()}
    return {"recipe": recipe_desc, "steps": steps, "rounds": rounds, "steps_per_s_wall": med_w, "steps_per_cpu_s": med_c,
            "all_wall": wall, "all_cpu": cpu,
            "ratio_wall": {k: med_w[k] / med_w["plain"] for k in med_w if k != "plain"},
            "ratio_cpu": {k: med_c[k] / med_c["plain"] for k in med_c if k != "plain"}}


# ---- memory (2 ranks) -------------------------------------------------------------------------

def _storages(tensors):
    seen, total = set(), 0
    for t in tensors:
        if not torch.is_tensor(t) or t.numel() == 0:
            continue
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def _param_and_optimizer_tensors(engine):
    """Parameters (their ZeRO-3 partitions), fp32 master partitions and optimizer state."""
    out = []
    for p in engine.module.parameters():
        out.append(p.ds_tensor if hasattr(p, "ds_tensor") else p.data)
    opt = engine.ds.optimizer if engine.ds is not None else engine.optimizer
    base = getattr(opt, "optimizer", opt)
    for st in base.state.values():
        out += [v for v in st.values() if torch.is_tensor(v) and v.numel() > 1]
    # fp32 master copies (names differ by optimizer wrapper: ZeRO 1/2, ZeRO-3, bf16/fp16 at stage 0)
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat_partition",
                 "fp32_groups", "fp32_groups_flat", "bit16_groups_flat", "fp16_partitioned_groups_flat"):
        for t in getattr(opt, name, None) or []:
            out += list(t) if isinstance(t, (list, tuple)) else [t]
    return out


def memory_rank():
    """Entry of one rank of the memory measurement (env: RANK, WORLD_SIZE, MASTER_*)."""
    from scaletrain.engine import build_engine, cleanup, init_distributed
    z, precision = int(sys.argv[2]), sys.argv[3]
    cfg = load_config(None, ["model.name=wide_mlp", "model.image_size=28", "model.width=4096", "optim.name=adam",
                             f"engine.zero_stage={z}", f"engine.precision={precision}", "data.batch_size=8"])
    dist = init_distributed(cfg)
    torch.manual_seed(0)
    engine = build_engine(cfg, create_model(cfg.model), dist)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(2):  # optimizer state exists after a step
        with engine.autocast():
            loss = F.cross_entropy(engine.forward(x).float(), y)
        engine.backward(loss)
        engine.step()
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters())
    nbytes = _storages(_param_and_optimizer_tensors(engine))
    res = {"rank": dist.rank, "zero": z, "precision": precision, "params": n_params, "bytes": nbytes}
    with open(sys.argv[4] + f".rank{dist.rank}.json", "w") as f:
        json.dump(res, f)
    cleanup()


def memory(precisions):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "engine"))
    from scaletrain.engine.dist import free_port
    out = {}
    for precision in precisions:
        for z in range(4):
            with tempfile.TemporaryDirectory() as tmp:
                port, procs = free_port(), []
                for r in range(2):
                    env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                               MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
                    procs.append(subprocess.Popen([sys.executable, __file__, "--memory-rank", str(z), precision,
                                                   os.path.join(tmp, "m")], env=env, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True))
                for p in procs:
                    log, _ = p.communicate(timeout=600)
                    if p.returncode:
                        raise RuntimeError(log[-3000:])
                ranks = [json.load(open(os.path.join(tmp, f"m.rank{r}.json"))) for r in range(2)]
            key = f"{precision}-z{z}"
            out[key] = {"params": ranks[0]["params"], "bytes_per_rank": [r["bytes"] for r in ranks]}
            print(f"{key}: {ranks[0]['params'] / 1e6:.1f}M params, per-rank MiB "
                  f"{[round(r['bytes'] / 2**20, 1) for r in ranks]}", flush=True)
    return out


def machine():
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "deepspeed": __import__("deepspeed").__version__, "load_avg_1m": os.getloadavg()[0]}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-rank":
        return memory_rank()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = {"machine": machine(), "command": " ".join(["python"] + sys.argv)}
    if not a.skip_throughput:
        res["throughput"] = throughput(a.steps, a.rounds)
        print(json.dumps({k: res["throughput"][k] for k in ("ratio_wall", "ratio_cpu")}, indent=1))
    if not a.skip_memory:
        res["memory"] = memory(a.precisions.split(","))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
