"""The quick evaluation during training: clean and PGD accuracy on a fixed test batch.

    fn = quick_eval_fn(cfg)          # None when train.eval_every_epochs = 0
    metrics = fn(model)              # {"acc": .., "loss": .., "pgd_acc": ..}

The trainer calls it every `train.eval_every_epochs` epochs (as its `eval_fn`) and logs
the result as `eval/acc`, `eval/pgd_acc` (W&B) and `val_acc`, `val_pgd_acc` (trainer hooks,
hence Ray Tune, where ASHA can stop a trial on them). So the dashboard shows robustness
over training time, not only at the end.

The batch is fixed (the first `train.eval_samples` samples of the test split, read once)
and so is the attack's random start (a generator seeded by `eval.seed`), so the curve's
changes come from the model alone; the global torch RNG is untouched, so training with and
without the quick evaluation draws the same random numbers. Every rank computes the same
numbers on the same batch (no collective). It is a cheap monitor: PGD with
`train.eval_steps` steps at `train.eval_eps` (default: the training budget
`method.attack.eps`), one restart; the final report's PGD-20 is the reference number.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

from ..attacks import create_attack


def _fixed_batch(cfg):
    from ..data import eval_loader
    xs, ys, n = [], [], 0
    for x, y in eval_loader(cfg.data, "test", batch_size=min(cfg.train.eval_samples, cfg.eval.batch_size)):
        xs.append(x)
        ys.append(y)
        n += int(y.shape[0])
        if n >= cfg.train.eval_samples:
            break
    return torch.cat(xs)[:cfg.train.eval_samples], torch.cat(ys)[:cfg.train.eval_samples]


def quick_eval_fn(cfg) -> Optional[Callable[[torch.nn.Module], Dict[str, float]]]:
    if not cfg.train.eval_every_epochs:
        return None
    eps = cfg.method.attack.eps if cfg.train.eval_eps is None else cfg.train.eval_eps
    attack = create_attack("pgd", eps=float(eps), steps=int(cfg.train.eval_steps), norm=cfg.eval.norm,
                           model_mode=cfg.eval.model_mode) if eps > 0 else None
    cache = {}

    def evaluate(model: torch.nn.Module) -> Dict[str, float]:
        if "batch" not in cache:
            cache["batch"] = _fixed_batch(cfg)
        x, y = cache["batch"]
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            logits = model(x).float()
        out = {"acc": float((logits.argmax(1) == y).float().mean()), "loss": float(F.cross_entropy(logits, y))}
        if attack is not None:
            gen = torch.Generator(device=device).manual_seed(int(cfg.eval.seed))
            with torch.enable_grad():           # the trainer calls eval_fn under no_grad
                x_adv = attack(model, x, y, generator=gen)
            with torch.no_grad():
                out["pgd_acc"] = float((model(x_adv).argmax(1) == y).float().mean())
        return out

    return evaluate
