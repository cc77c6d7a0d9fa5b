"""Free adversarial training (Shafahi, Najibi, Ghiasi, Xu, Dickerson, Studer, Davis, Taylor &
Goldstein, "Adversarial Training for Free!", NeurIPS 2019, Algorithm 1).

Each minibatch is replayed m times (`method.replays`). Every replay makes ONE forward and ONE
backward pass on x + delta; that backward gives both the parameter gradient (the optimizer
steps on it) and the input gradient, which updates the perturbation:

    for i in 1..m:
        g_theta, g_x = grad CE(f(x + delta), y)        (one backward)
        theta <- optimizer step with g_theta
        delta <- clip_[-eps, eps](delta + eps * sign(g_x))

delta is carried over to the next minibatch (it starts at 0). To keep the number of gradient
computations of `train.epochs` epochs of natural training, the trainer runs ceil(epochs / m)
data epochs (each batch m times); the lr schedule spans all m x steps.
The step size is `method.attack.alpha` (default eps, as in the paper); the attack must be
single-step L-inf (`method.attack.steps=1`): the replays are the attack's iterations.
delta is per rank (the rank's slice of the batch) and is method state, saved per rank in
checkpoints, so kill/resume is exact. Needs `engine.grad_accum=1`: every replay is an
optimizer step.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import register_method
from .adversarial import AdversarialMethod, soft_ce
from .base import Event, MethodOutput
from ..errors import ConfigError


def free_at_update(delta: torch.Tensor, grad: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    """delta + alpha * sign(grad), clipped to the eps cube (Shafahi et al. 2019, Alg. 1)."""
    return (delta + alpha * grad.sign()).clamp(-eps, eps)


def free_at_loss(model, x, y, delta: torch.Tensor, label_smoothing: float = 0.0):
    """Functional form of one replay: (MethodOutput, x_adv leaf). After `loss.backward()`,
    `free_at_update(delta, x_adv.grad, eps, alpha)` gives the next perturbation."""
    x_adv = (x.detach() + delta.to(x.dtype)).clamp(0.0, 1.0).requires_grad_(True)
    logits = model(x_adv)
    return MethodOutput(soft_ce(logits, y, label_smoothing), logits, {}), x_adv


@register_method("free_at")
class FreeAT(AdversarialMethod):
    name = "free_at"
    events = (Event.LOSS, Event.AFTER_BACKWARD)
    state_attrs = ("delta",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.replays = int(cfg.replays)
        self.eps = float(cfg.attack.eps)
        self.alpha = self.eps if cfg.attack.alpha is None else float(cfg.attack.alpha)
        self.delta: Optional[torch.Tensor] = None
        self._x_adv = None

    @classmethod
    def replays_for(cls, cfg) -> int:
        return int(cfg.replays)

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        if cfg.replays < 1:
            raise ConfigError(f"key '{key}.replays': must be >= 1, got {cfg.replays}")
        if cfg.attack.steps != 1:
            raise ConfigError(f"key '{key}.attack.steps': free_at updates its perturbation once per replay "
                              f"(one backward); a multi-step attack ({cfg.attack.steps} steps) is impossible: "
                              f"set {key}.attack.steps=1 and choose {key}.replays")
        if cfg.attack.name not in ("fgsm", "fgsm_rs", "pgd", "bim"):
            raise ConfigError(f"key '{key}.attack.name': free_at takes sign-gradient steps (fgsm, pgd, bim with "
                              f"steps=1), not '{cfg.attack.name}'")
        if cfg.attack.norm != "linf":
            raise ConfigError(f"key '{key}.attack.norm': free_at is L-inf (sign steps, cube clipping)")
        if cfg.attack_target != "label" or cfg.clean_weight or cfg.eps_warmup_steps or cfg.steps_warmup_steps:
            raise ConfigError(f"key '{key}': free_at supports none of attack_target=prediction, clean_weight, "
                              f"eps_warmup_steps, steps_warmup_steps (its perturbation comes from the training "
                              f"backward itself)")

    def loss(self, model, x, y, ctx):
        if self.delta is None or self.delta.shape != x.shape:
            self.delta = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        out, self._x_adv = free_at_loss(model, x, y, self.delta.to(x.device), self.label_smoothing)
        return out

    def after_backward(self, ctx):
        g = self._x_adv.grad
        self.delta = free_at_update(self.delta.to(g.device), g.float(), self.eps, self.alpha).detach()
        self._x_adv = None
