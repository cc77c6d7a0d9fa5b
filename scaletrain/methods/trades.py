"""TRADES and MART: adversarial training with a robust regulariser on top of a natural loss.

TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between
Robustness and Accuracy", ICML 2019, eq. 5):

    x' = argmax_{||x' - x|| <= eps} KL(f(x) || f(x'))                       (inner max, same attacks as PGD-AT)
    L  = CE(f(x), y) + beta * (1/N) sum_i KL(f(x_i) || f(x'_i))               (beta = 6 in the paper's CIFAR runs)

MART (Wang, Zou, Yi, Bailey, Ma & Gu, "Improving Adversarial Robustness Requires Revisiting
Misclassified Examples", ICLR 2020, eq. 10):

    x' = argmax CE(f(x'), y)                                                  (PGD-AT's attack)
    BCE(p', y) = -log p'_y - log(1 - max_{k != y} p'_k)                      (boosted CE)
    L  = (1/N) sum_i [ BCE(p'_i, y_i) + beta * KL(p_i || p'_i) * (1 - p_{i,y_i}) ]   (beta = 6 in the paper)

p = softmax(f(x)), p' = softmax(f(x')). The inner maximisation is `method.attack` run on
`ctx.attack_model` in the attack's mode (default eval, as the reference implementations); the
TRADES attack maximises the KL through the attacks' open objective. Our attacks start from a
uniform point of the eps-ball (`attack.random_start`); the TRADES reference starts at
x + 0.001 N(0, I). Set `attack.random_start=false` to start at x itself.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import register_method
from .adversarial import AdversarialMethod, soft_ce
from .base import Event, MethodOutput, hard_labels
from ..errors import ConfigError

DEFAULT_BETA = 6.0
_EPS = 1e-12


def kl_per_sample(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p_logits) || softmax(q_logits)) per sample, in fp32."""
    logp, logq = F.log_softmax(p_logits.float(), 1), F.log_softmax(q_logits.float(), 1)
    return (logp.exp() * (logp - logq)).sum(1)


def trades_objective(adv_logits, y, clean_logits):
    """The TRADES inner objective (per sample): KL(f(x) || f(x')). Labels are not used."""
    return kl_per_sample(clean_logits, adv_logits)


def trades_terms(clean_logits, adv_logits, y, beta: float):
    """(loss, natural CE, robust KL) of TRADES from the two forwards."""
    natural = soft_ce(clean_logits, y)
    robust = kl_per_sample(clean_logits, adv_logits).mean()
    return natural + beta * robust, natural, robust


def mart_terms(clean_logits, adv_logits, y, beta: float):
    """(loss, boosted CE, weighted KL) of MART from the two forwards (y: class indices)."""
    p_adv = F.softmax(adv_logits.float(), 1)
    p_nat = F.softmax(clean_logits.float(), 1)
    others = p_adv.scatter(1, y[:, None], float("-inf"))
    bce = F.cross_entropy(adv_logits.float(), y, reduction="none") \
        - torch.log((1.0 - others.amax(1)).clamp_min(_EPS))
    weight = 1.0 - p_nat.gather(1, y[:, None]).squeeze(1)
    robust = kl_per_sample(clean_logits, adv_logits) * weight
    return (bce + beta * robust).mean(), bce.mean(), robust.mean()


def trades_loss(model, x, y, attack, beta: float = DEFAULT_BETA, *, attack_model=None, generator=None):
    """Functional TRADES: attack (KL objective) on `attack_model` (default `model`), then the loss."""
    x_adv = attack(attack_model or model, x, hard_labels(y), generator=generator, objective=trades_objective)
    clean_logits, adv_logits = model(x), model(x_adv)
    loss, nat, rob = trades_terms(clean_logits, adv_logits, y, beta)
    return MethodOutput(loss, clean_logits, {"natural_loss": float(nat.detach()), "robust_kl": float(rob.detach())})


def mart_loss(model, x, y, attack, beta: float = DEFAULT_BETA, *, attack_model=None, generator=None):
    """Functional MART: the attack's own (CE) objective, then the MART loss."""
    y = hard_labels(y)
    x_adv = attack(attack_model or model, x, y, generator=generator)
    clean_logits, adv_logits = model(x), model(x_adv)
    loss, bce, rob = mart_terms(clean_logits, adv_logits, y, beta)
    return MethodOutput(loss, adv_logits, {"boosted_ce": float(bce.detach()), "robust_kl": float(rob.detach())})


class _BetaMethod(AdversarialMethod):
    uses_beta = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.beta = DEFAULT_BETA if cfg.beta is None else float(cfg.beta)

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        if cfg.beta is not None and not (0.0 < cfg.beta <= 100.0 and math.isfinite(cfg.beta)):
            raise ConfigError(f"key '{key}.beta': {cls.name} needs 0 < beta <= 100, got {cfg.beta}")
        if cfg.clean_weight:
            raise ConfigError(f"key '{key}.clean_weight': {cls.name} has its own clean term (weighted by "
                              f"{key}.beta); leave clean_weight at 0")
        if cfg.label_smoothing:
            raise ConfigError(f"key '{key}.label_smoothing': not used by {cls.name}")


@register_method("trades")
class TRADES(_BetaMethod):
    name = "trades"
    events = (Event.LOSS,)

    def loss(self, model, x, y, ctx):
        x_adv = self.perturb(x, y, ctx, objective=trades_objective)
        clean_logits, adv_logits = model(x), model(x_adv)
        loss, nat, rob = trades_terms(clean_logits, adv_logits, y, self.beta)
        return MethodOutput(loss, clean_logits, {"natural_loss": float(nat.detach()),
                                                 "robust_kl": float(rob.detach())})


@register_method("mart")
class MART(_BetaMethod):
    name = "mart"
    events = (Event.LOSS,)

    def loss(self, model, x, y, ctx):
        y = hard_labels(y)
        x_adv = self.perturb(x, y, ctx)
        clean_logits, adv_logits = model(x), model(x_adv)
        loss, bce, rob = mart_terms(clean_logits, adv_logits, y, self.beta)
        return MethodOutput(loss, adv_logits, {"boosted_ce": float(bce.detach()), "robust_kl": float(rob.detach())})
