"""PGD adversarial training (Madry et al., "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018): minimise the loss on the
worst-case perturbation found by projected gradient descent with a random start.

    min_theta E[(x,y)] max_{||delta||_p <= eps} CE(f_theta(x + delta), y)

The inner max runs on `ctx.attack_model` (the unwrapped module) in the mode
the attack config names (`model_mode`, default eval: BatchNorm statistics are
not updated by attack forwards); the outer loss runs through the engine.
"""
from __future__ import annotations

import torch.nn.functional as F

from . import register_method
from .base import Method, MethodOutput


@register_method("pgd_at")
class PGDAdversarialTraining(Method):
    name = "pgd_at"

    def __init__(self, cfg):
        super().__init__(cfg)
        from ..attacks import attack_from_config
        self.attack = attack_from_config(cfg.attack)
        kw = dict(cfg.kwargs)
        # fraction of the batch trained on clean inputs (0 = pure Madry AT)
        self.clean_fraction = float(kw.pop("clean_fraction", 0.0))
        self.label_smoothing = float(kw.pop("label_smoothing", 0.0))
        if kw:
            from ..errors import ConfigError
            raise ConfigError(f"key 'method.kwargs': unknown option(s) for pgd_at: {', '.join(kw)}")

    def loss(self, model, x, y, ctx):
        # random starts draw from the global torch RNG, which the trainer seeds and checkpoints
        x_adv = self.attack(ctx.attack_model, x, y, generator=getattr(ctx, "generator", None))
        logits = model(x_adv)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        info = {}
        if self.clean_fraction > 0:
            clean_logits = model(x)
            clean = F.cross_entropy(clean_logits.float(), y, label_smoothing=self.label_smoothing)
            loss = (1 - self.clean_fraction) * loss + self.clean_fraction * clean
            info["clean_loss"] = float(clean.detach())
        return MethodOutput(loss, logits, info)
