"""Wong, Rice & Kolter 2020's MNIST fast-AT recipe as a plain PyTorch loop (the speed reference
of bench/reproduce_mnist.py; no scaletrain code).

Recipe (their train_mnist.py defaults): the 2-conv net, FGSM with a uniform random start in
[-eps, eps], eps 0.3, step 0.375, 10 epochs of batch 100, Adam with a triangular learning rate
0 -> 5e-3 (at 2/5 of the run) -> 0 updated every step. As in their code the gradient is taken at
the unclipped start x + delta (scaletrain: fgsm_rs with clip_start=false); `--clip-start` clips the
start to [0, 1] first (scaletrain's default FGSM-RS).

    python bench/plain_fast_at.py --data ../shared/data/mnist [--epochs 10] [--threads 1] [--json out.json]
        [--save model.pt] [--max-steps N]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(folder, part):
    x = read_idx(os.path.join(folder, f"{part}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(folder, f"{part}-labels-idx1-ubyte.gz"))
    return torch.tensor(x, dtype=torch.float32).div_(255).unsqueeze(1), torch.tensor(y, dtype=torch.int64)


def wong_net():
    return nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


def fgsm_rs(model, x, y, eps, alpha, clip_start=False):
    delta = (torch.rand_like(x) * 2 - 1) * eps
    x0 = (x + delta).clamp(0, 1) if clip_start else x + delta
    x0.requires_grad_(True)
    loss = F.cross_entropy(model(x0), y)
    (g,) = torch.autograd.grad(loss, x0)
    x_adv = torch.max(torch.min(x0.detach() + alpha * g.sign(), x + eps), x - eps)
    return x_adv.clamp(0, 1)


def pgd_accuracy(model, x, y, eps=0.3, alpha=0.01, steps=20, bs=500):
    ok = 0
    model.eval()
    for i in range(0, len(x), bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        xa = (xb + (torch.rand_like(xb) * 2 - 1) * eps).clamp(0, 1)
        for _ in range(steps):
            xa.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(model(xa), yb), xa)
            xa = torch.max(torch.min(xa.detach() + alpha * g.sign(), xb + eps), xb - eps).clamp(0, 1)
        with torch.no_grad():
            ok += int((model(xa).argmax(1) == yb).sum())
    return ok / len(x)


def train(data, epochs=10, bs=100, eps=0.3, alpha=0.375, lr_max=5e-3, seed=0, threads=1, eval_samples=1000,
          clip_start=False, save=None, max_steps=None):
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x, y = load(data, "train")
    xt, yt = load(data, "t10k")
    model = wong_net()
    opt = torch.optim.Adam(model.parameters(), lr=lr_max)
    n_steps = epochs * (len(x) // bs)
    peak = int(n_steps * 2 / 5)
    step = 0
    t0 = time.perf_counter()
    for ep in range(epochs):
        if max_steps is not None and step >= max_steps:
            break
        perm = torch.randperm(len(x))
        model.train()
        for i in range(0, len(x) - bs + 1, bs):
            if max_steps is not None and step >= max_steps:
                break
            idx = perm[i:i + bs]
            xb, yb = x[idx], y[idx]
            # triangular schedule 0 -> lr_max (2/5 of the steps) -> 0, set before each step
            lr = lr_max * (step + 1) / peak if step < peak else lr_max * (n_steps - step) / (n_steps - peak)
            for grp in opt.param_groups:
                grp["lr"] = lr
            x_adv = fgsm_rs(model, xb, yb, eps, alpha, clip_start)
            loss = F.cross_entropy(model(x_adv), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    seconds = time.perf_counter() - t0
    if save:
        torch.save(model.state_dict(), save)
    model.eval()
    with torch.no_grad():
        clean = float((model(xt).argmax(1) == yt).float().mean())
    pgd = pgd_accuracy(model, xt[:eval_samples], yt[:eval_samples]) if eval_samples else None
    return {"steps": step, "seconds": seconds, "steps_per_s": step / seconds, "clean": clean,
            f"pgd20_first{eval_samples}": pgd, "threads": threads, "epochs": epochs, "clip_start": clip_start}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--clip-start", action="store_true")
    p.add_argument("--save", default=None, help="write the trained state dict here (bench/wong_eval.py reads it)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (speed runs; the "
                   "learning-rate schedule still spans --epochs)")
    p.add_argument("--eval-samples", type=int, default=1000, help="PGD-20 check on the first N test images")
    a = p.parse_args(argv)
    r = train(a.data, epochs=a.epochs, threads=a.threads, seed=a.seed, clip_start=a.clip_start, save=a.save,
              max_steps=a.max_steps, eval_samples=a.eval_samples)
    print(json.dumps(r, indent=1), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
