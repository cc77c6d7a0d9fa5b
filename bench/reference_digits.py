"""Plain-PyTorch reference of the default recipe (no scaletrain engine, data or attacks).

PGD adversarial training (Madry et al. 2018) of the digits CNN on sklearn digits
with the same split sizes, then PGD-20 accuracy at an epsilon grid. Prints a
table. Used to check the default job's numbers and to tune the recipe.

    python bench/reference_digits.py [--epochs 30] [--eps 0.25] [--steps 5] [--lr 3e-3] [--threads 1]
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from scaletrain.config.schema import AttackConfig, ModelConfig
from scaletrain.models import create_model


def pgd(model, x, y, eps, alpha, steps, gen):
    was = model.training
    model.eval()
    delta = (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(model(x + delta), y)
        g, = torch.autograd.grad(loss, delta)
        delta = (delta + alpha * g.sign()).clamp(-eps, eps)
        delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
    model.train(was)
    return (x + delta).detach()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--eps", type=float, default=AttackConfig.eps)
    ap.add_argument("--steps", type=int, default=AttackConfig.steps)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=ModelConfig.width)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--standard", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(X, d.target, test_size=0.2, random_state=0, stratify=d.target)
    xtr, xte = torch.tensor(xtr), torch.tensor(xte)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    model = create_model(ModelConfig(width=a.width))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    steps_per_epoch = (len(xtr) + a.batch - 1) // a.batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()
    for ep in range(a.epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), a.batch):
            idx = perm[i:i + a.batch]
            x, y = xtr[idx], ytr[idx]
            if not a.standard:
                x = pgd(model, x, y, a.eps, 2.5 * a.eps / a.steps, a.steps, gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    t_train = time.time() - t0
    model.eval()
    rows = []
    for e in [0.0, 0.05, 0.1, 0.2, 0.3]:
        xa = pgd(model, xte, yte, e, 2.5 * e / 20, 20, torch.Generator().manual_seed(1)) if e > 0 else xte
        with torch.no_grad():
            rows.append((e, (model(xa).argmax(1) == yte).float().mean().item()))
    print(f"train seconds: {t_train:.1f}  ({'standard' if a.standard else f'PGD-{a.steps} eps={a.eps}'}, "
          f"{a.epochs} epochs)")
    print("| eps | PGD-20 acc |\n|---|---|")
    for e, acc in rows:
        print(f"| {e:.2f} | {acc:.4f} |")


if __name__ == "__main__":
    main()
