"""The "AutoAttack-style" preset (Croce & Hein 2020): APGD-CE, then APGD-T (targeted DLR
against the top-9 other classes) on the samples APGD-CE did not break; a sample counts as
robust at an epsilon only if it survives both. Reported as ``report["autoattack"]``,
separately from the PGD numbers (it also enters the per-sample worst case).

Steps per run: ``cfg.autoattack_steps`` (AutoAttack's standard version uses 100).
"""
from __future__ import annotations

import torch

from ..attacks import APGDCE, APGDT, ModelMode
from ..rng import SampleRNG


def autoattack_batch_fn(cfg, grid):
    steps = int(getattr(cfg, "autoattack_steps", 100))

    class _Preset:   # APGD-CE, then APGD-T on the samples APGD-CE left correct
        def __init__(self, eps):
            self.attacks = (APGDCE(eps=eps, steps=steps, norm=cfg.norm, model_mode=cfg.model_mode),
                            APGDT(eps=eps, steps=steps, norm=cfg.norm, model_mode=cfg.model_mode))
            for atk in self.attacks:
                atk.eot_samples = int(getattr(cfg, "eot_samples", 1))   # EOT for randomised models

        def __call__(self, model, x, y, rng):
            out, alive = x.clone(), torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            for k, atk in enumerate(self.attacks):
                idx = alive.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                x_adv = atk(model, x[idx], y[idx], rng.fork(k).subset(idx.cpu()))
                with torch.no_grad(), ModelMode(model, cfg.model_mode):
                    alive[idx] = model(x_adv).float().argmax(1) == y[idx]
                out[idx] = x_adv
            return out

    def run(model, x, y, index, ok_clean):
        from .suite import attack_curve   # suite imports this module lazily; no cycle at import time
        return attack_curve(model, x, y, ok_clean, grid, cfg, _Preset, SampleRNG(cfg.seed, index, "autoattack"))

    return run
