"""Sweep scaling: wall time of 8 short trials on Ray Tune at concurrency 1 vs 2, and the per-trial
overhead of Ray Tune versus running the same trial directly.

    python bench/sweep_scaling.py [--trials 8] [--epochs 1] [--json out.json]

One trial = the default job (PGD-AT, digits CNN, DeepSpeed engine) for `--epochs` epochs with a
small final evaluation and W&B off; trials differ only in `seed` (a grid). Measured in one
process, in this order, so the variants see the same machine load:
  direct       the same trial config run in this process with `scaletrain.run.train_worker`
               (imports warm: the pure cost of a trial), --direct times, before and after
  sweep c=1    `scaletrain sweep` over the trials, one at a time (Ray started by the sweep)
  sweep c=2    the same at concurrency 2 (2 logical CPUs, one torch thread per trial)
Reported: sweep wall times (Ray start included and separately), speed-up c=1 -> c=2, and the
per-trial Ray overhead = (sweep c=1 wall - Ray start) / trials - direct trial time. `uptime`
load is printed at start and end: on a shared machine read the ratios, not the seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import yaml  # noqa: E402

TRIAL = {"train.epochs": 1, "eval.attacks": ["pgd"], "eval.eps": [0.0, 0.2], "eval.pgd_steps": 5,
         "eval.max_samples": 128, "tracking.wandb": False}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def direct(root: str, i: int, epochs: int) -> float:
    from scaletrain.config import load_config
    from scaletrain.run import train_worker
    over = [f"{k}={json.dumps(v)}" for k, v in dict(TRIAL, **{"train.epochs": epochs}).items()]
    cfg = load_config(os.path.join(REPO, "configs", "default.yaml"),
                      over + [f"data.root={root}/data", f"out_dir={root}/direct", f"name=d{i}", f"seed={i}",
                              "train.progress=false"])
    t0 = time.perf_counter()
    train_worker(cfg)
    return time.perf_counter() - t0


def sweep(root: str, name: str, trials: int, concurrency: int, epochs: int) -> dict:
    doc = {"name": name, "base": os.path.join(REPO, "configs", "default.yaml"), "out_dir": f"{root}/sweeps",
           "overrides": dict(TRIAL, **{"train.epochs": epochs, "data.root": f"{root}/data"}),
           "space": {"seed": {"grid": list(range(trials))}}, "metric": "pgd/acc@0.2",
           "concurrency": concurrency}
    path = os.path.join(root, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    code = ("import sys, time; t0 = time.perf_counter(); import ray; from scaletrain.orchestrate.sweep import "
            "run_sweep, _connect; from scaletrain.orchestrate.sweep_spec import load_sweep; "
            f"spec = load_sweep({path!r}); t1 = time.perf_counter(); _connect(spec, {concurrency}); "
            "t2 = time.perf_counter(); s = run_sweep(" + repr(path) + "); t3 = time.perf_counter(); "
            "print('BENCH', t2 - t1, t3 - t2, s['counts']['ok'], flush=True)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO))
    wall = time.perf_counter() - t0
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH")]
    if not line:
        raise SystemExit(f"sweep failed:\n{out.stderr[-3000:]}")
    _, ray_start, run, ok = line[0].split()
    with open(os.path.join(root, "sweeps", name, "results.json")) as f:
        rows = json.load(f)["rows"]
    return {"wall_s": round(wall, 2), "ray_start_s": round(float(ray_start), 2), "sweep_s": round(float(run), 2),
            "ok": int(ok), "trial_s_median": round(statistics.median(r["seconds"] for r in rows), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--direct", type=int, default=3, help="direct runs before and after the sweeps")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    res = {"uptime_start": uptime(), "cpus": os.cpu_count(), "trials": a.trials, "epochs": a.epochs}
    print(res["uptime_start"], flush=True)
    with tempfile.TemporaryDirectory() as root:
        d = [direct(root, i, a.epochs) for i in range(a.direct)]
        print(f"direct: {[round(x, 2) for x in d]}", flush=True)
        res["c1"] = sweep(root, "c1", a.trials, 1, a.epochs)
        print(f"sweep c=1: {res['c1']}", flush=True)
        res["c2"] = sweep(root, "c2", a.trials, 2, a.epochs)
        print(f"sweep c=2: {res['c2']}", flush=True)
        d += [direct(root, 100 + i, a.epochs) for i in range(a.direct)]
        print(f"direct (all): {[round(x, 2) for x in d]}", flush=True)
    res["direct_s_median"] = round(statistics.median(d[1:]), 2)     # the first run pays one-time costs
    res["speedup_c2"] = round(res["c1"]["sweep_s"] / res["c2"]["sweep_s"], 2)
    res["ray_overhead_per_trial_s"] = round(res["c1"]["sweep_s"] / a.trials - res["direct_s_median"], 2)
    res["uptime_end"] = uptime()
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
