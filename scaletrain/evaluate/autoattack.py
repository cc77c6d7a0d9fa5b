"""The "AutoAttack-style" preset (Croce & Hein 2020): APGD-CE, then APGD-T (targeted DLR
against the top-9 other classes) on the samples APGD-CE did not break; a sample counts as
robust at an epsilon only if it survives both. Reported as ``report["autoattack"]``,
separately from the PGD numbers (it also enters the per-sample worst case).

Steps per run: ``cfg.autoattack_steps`` (AutoAttack's standard version uses 100).
"""
from __future__ import annotations

import torch

from ..attacks import APGDCE, APGDT, ModelMode


def autoattack_batch_fn(cfg, grid):
    steps = int(getattr(cfg, "autoattack_steps", 100))

    def run(model, x, y, b, ok_clean):
        from .suite import make_generator
        mat = torch.zeros(x.shape[0], len(grid), dtype=torch.bool, device=x.device)
        for j, e in enumerate(grid):
            if e == 0:
                mat[:, j] = ok_clean
                continue
            alive = ok_clean.clone()
            for k, atk in enumerate((APGDCE(eps=e, steps=steps, norm=cfg.norm, model_mode=cfg.model_mode),
                                     APGDT(eps=e, steps=steps, norm=cfg.norm, model_mode=cfg.model_mode))):
                atk.eot_samples = int(getattr(cfg, "eot_samples", 1))   # EOT for randomised models
                idx = alive.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                gen = make_generator(x.device, cfg.seed, "autoattack", k, j, b)
                x_adv = atk(model, x[idx], y[idx], gen)
                with torch.no_grad(), ModelMode(model, cfg.model_mode):
                    alive[idx] = model(x_adv).float().argmax(1) == y[idx]
            mat[:, j] = alive
        return mat

    return run
