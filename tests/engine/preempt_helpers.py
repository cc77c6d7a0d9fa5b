"""Start real `scaletrain train` processes (1 process, or torchrun with 2 ranks), signal them
mid-run, and compare what they leave behind."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from scaletrain.engine.dist import free_port

# tiny but real: the default job's data (digits shards), model and PGD-AT method, a short
# evaluation; the data folder is shared between runs of a test module
BASE = ["train.progress=false", "tracking.wandb=false", "train.log_every=1", "method.attack.steps=2",
        "eval.attacks=[fgsm]", "eval.eps=[0.0,0.1]", "eval.max_samples=64", "engine.cpu_threads=1"]


def env():
    e = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def command(ranks, overrides):
    if ranks == 1:
        return [sys.executable, "-m", "scaletrain.cli", "train", *BASE, *overrides]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}",
            f"--master-port={free_port()}", "-m", "scaletrain.cli", "train", *BASE,
            "engine.launcher=torchrun", *overrides]


def run(ranks, overrides, timeout=400):
    p = subprocess.run(command(ranks, overrides), env=env(), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def max_step(run_dir):
    try:
        with open(os.path.join(run_dir, "train_log.jsonl")) as f:
            return max((json.loads(line)["step"] for line in f if line.strip()), default=0)
    except (OSError, ValueError):
        return 0


def run_and_signal(ranks, overrides, run_dir, at_step, sig=signal.SIGTERM, timeout=400):
    """Start a run, send `sig` once its log shows step >= at_step; return (status, output)."""
    p = subprocess.Popen(command(ranks, overrides), env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    try:
        while max_step(run_dir) < at_step:
            if p.poll() is not None or time.time() - t0 > timeout:
                out = p.communicate()[0]
                raise AssertionError(f"run ended (or timed out) before step {at_step}: {p.returncode}\n{out[-3000:]}")
            time.sleep(0.02)
        p.send_signal(sig)
        out, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, out


def same_weights(a, b):
    sa = torch.load(os.path.join(a, "model.pt"), weights_only=True)
    sb = torch.load(os.path.join(b, "model.pt"), weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def log_rows(run_dir):
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return {r["step"]: r for r in (json.loads(line) for line in f if line.strip())}


def report(run_dir):
    with open(os.path.join(run_dir, "report.json")) as f:
        rep = json.load(f)
    return {k: rep[k] for k in ("n", "clean_acc", "attacks", "robustness_score")}
