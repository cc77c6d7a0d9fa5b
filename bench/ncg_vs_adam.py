"""Nonlinear conjugate gradient (`optim.name=ncg`) vs Adam training a neural-ODE classifier.

    python bench/ncg_vs_adam.py                 # full batch and mini-batch, digits, node_cnn
    python bench/ncg_vs_adam.py --steps 30 --width 8 --train-samples 512   # as in docs/methods.md

The model is the registered `node_cnn` (RK4 with 2 steps, 4x4 head pooling: the architecture
of configs/node_digits.yaml, width set here) on the digits split of scaletrain.evaluate.toy
(the first --train-samples of its 1400 training images; its 397 test images); the optimizers
are built from the registry (`engine.optim.create_optimizer`) as a run builds them. Same initial weights for every
optimizer. Reported: training loss and test accuracy after the given number of optimizer steps,
loss evaluations (forward passes incl. the line search) and seconds. `uptime` is printed: on a
shared machine only the loss / accuracy columns are comparable across runs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scaletrain.config import load_config  # noqa: E402
from scaletrain.engine.optim import create_optimizer  # noqa: E402
from scaletrain.evaluate.toy import digits_split  # noqa: E402
from scaletrain.models import create_model  # noqa: E402


def run(opt_over, steps, batch, width, n_train, seed=0):
    cfg = load_config(None, ["model.name=node_cnn", f"model.width={width}", "engine.backend=torch",
                             "model.kwargs={solver: rk4, steps: 2, head_pool: 4}", *opt_over])
    (xt, yt), (xv, yv) = digits_split(1400)
    xt, yt = xt[:n_train], yt[:n_train]
    torch.manual_seed(seed)
    model = create_model(cfg.model).train()
    opt = create_optimizer(cfg.optim, model.parameters())
    g = torch.Generator().manual_seed(seed)
    evals, t0 = 0, time.perf_counter()
    perm, pos = torch.randperm(len(xt), generator=g), 0
    for _ in range(steps):
        if batch >= len(xt):
            xb, yb = xt, yt
        else:
            if pos + batch > len(xt):
                perm, pos = torch.randperm(len(xt), generator=g), 0
            idx = perm[pos:pos + batch]
            pos += batch
            xb, yb = xt[idx], yt[idx]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        evals += 1

        def closure():
            nonlocal evals
            evals += 1
            return F.cross_entropy(model(xb), yb)
        opt.step(closure) if getattr(opt, "requires_closure", False) else opt.step()
    secs = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        train_loss = float(F.cross_entropy(model(xt), yt))
        acc = float((model(xv).argmax(1) == yv).float().mean())
    return train_loss, acc, evals, secs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--train-samples", type=int, default=512, help="training images (full batch = all of them)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print("# load: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"# node_cnn width {a.width}, RK4 x2, {a.steps} optimizer steps, digits {a.train_samples} train / 397 test")
    print("| batch | optimizer | train loss | test acc (%) | loss evaluations | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    settings = [("optim.name=ncg", "optim.lr=10.0", "optim.kwargs={beta: pr}"),
                ("optim.name=ncg", "optim.lr=10.0", "optim.kwargs={beta: fr}"),
                ("optim.name=adam", "optim.lr=0.01"), ("optim.name=adam", "optim.lr=0.003")]
    for batch in (a.train_samples, 64):
        for s in settings:
            loss, acc, evals, secs = run(list(s), a.steps, batch, a.width, a.train_samples)
            label = " ".join(v.split("=", 1)[1] for v in s)
            tag = f"full ({batch})" if batch >= a.train_samples else str(batch)
            print(f"| {tag} | {label} | {loss:.4f} | {100 * acc:.1f} | "
                  f"{evals} | {secs:.1f} |", flush=True)
    print("# load: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
