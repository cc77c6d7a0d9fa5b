"""Adversarial training: the shared machinery and PGD-AT.

PGD-AT (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018): minimise the loss on the worst-case perturbation found by projected gradient
descent with a random start,

    min_theta E[(x,y)] max_{||delta||_p <= eps} CE(f_theta(x + delta), y)

Options shared by the adversarial methods (section `method`, docs/methods.md):
* `clean_weight` w: loss = (1 - w) CE(adv) + w CE(clean) (Goodfellow et al. 2015 used 0.5).
* `attack_target=prediction`: attack the model's own clean prediction instead of the label,
  so the perturbation carries no label information (label leaking, Kurakin, Goodfellow &
  Bengio, "Adversarial Machine Learning at Scale", ICLR 2017).
* `eps_warmup_steps` / `steps_warmup_steps`: linear ramps of the attack budget and strength
  over the first optimizer steps (a derived schedule: the position is the global step, which
  checkpoints already hold).

The inner max runs on `ctx.attack_model` (the unwrapped module) in the attack's
`model_mode` (default eval); random starts come from `ctx.rng` (per global sample index).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from . import register_method
from .base import Event, Method, MethodOutput, hard_labels
from ..attacks import attack_from_config, create_attack
from ..errors import ConfigError


def soft_ce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy for class indices or soft targets (after mixing)."""
    return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)


def warmup(value: float, step: int, steps: int) -> float:
    """Linear ramp: value * min(1, (step + 1) / steps) (no ramp when steps == 0)."""
    return value if steps <= 0 else value * min(1.0, (step + 1) / steps)


def plain_section(node):
    """A validated config section as plain attributes (nested mappings as dicts): read every step,
    OmegaConf's attribute access cost ~0.05 ms a key, ~0.3 ms of a 25 ms MNIST fast-AT step."""
    if isinstance(node, DictConfig):
        return SimpleNamespace(**OmegaConf.to_container(node, resolve=True))
    return node


def attack_labels(model, x, y, target: str) -> torch.Tensor:
    """The labels an attack pushes away from: the true labels, or the model's clean prediction."""
    if target == "label":
        return hard_labels(y)
    with torch.no_grad():
        was = model.training
        model.eval()
        pred = model(x).argmax(1)
        model.train(was)
    return pred


class AdversarialMethod(Method):
    """Base of the methods whose inner maximisation is `method.attack` (subclasses declare events)."""

    uses_beta = False          # trades / mart weight a robust term by method.beta

    def __init__(self, cfg):
        super().__init__(cfg)
        self.attack_cfg = plain_section(cfg.attack)
        self.clean_weight = float(cfg.clean_weight)
        self.label_smoothing = float(cfg.label_smoothing)
        self.target = str(cfg.attack_target)
        self.eps_warmup, self.steps_warmup = int(cfg.eps_warmup_steps), int(cfg.steps_warmup_steps)
        self.alpha_scale = 1.0          # changed by fast_at's guard (method state there)
        self._cache = (None, None)
        if dict(cfg.kwargs or {}):
            raise ConfigError(f"key 'method.kwargs': {self.name} takes no kwargs "
                              f"({', '.join(cfg.kwargs)}); its options are typed keys of 'method'")

    @classmethod
    def check_config(cls, cfg, key):
        if not 0.0 <= cfg.clean_weight <= 1.0:
            raise ConfigError(f"key '{key}.clean_weight': must be in [0, 1], got {cfg.clean_weight}")
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ConfigError(f"key '{key}.label_smoothing': must be in [0, 1), got {cfg.label_smoothing}")
        if cfg.attack_target not in ("label", "prediction"):
            raise ConfigError(f"key '{key}.attack_target': must be label or prediction, got '{cfg.attack_target}'")
        for k in ("eps_warmup_steps", "steps_warmup_steps"):
            if cfg[k] < 0:
                raise ConfigError(f"key '{key}.{k}': must be >= 0, got {cfg[k]}")
        if not 0.0 <= cfg.attack.eps <= 1.0:
            raise ConfigError(f"key '{key}.attack.eps': must be in [0, 1] (pixel units), got {cfg.attack.eps}")
        if cfg.beta is not None and not cls.uses_beta:
            raise ConfigError(f"key '{key}.beta': {cfg.name} has no beta (trades and mart do)")
        if cfg.guard.every and cls.name != "fast_at":
            raise ConfigError(f"key '{key}.guard.every': the catastrophic-overfitting guard belongs to fast_at, "
                              f"not {cfg.name}")
        if dict(cfg.kwargs or {}):
            raise ConfigError(f"key '{key}.kwargs': {cfg.name} takes no kwargs ({', '.join(cfg.kwargs)}); "
                              f"its options are typed keys of '{key}' (docs/methods.md)")
        attack_from_config(cfg.attack)  # attack names and options, with the key named

    # ---- the attack of this step ------------------------------------------------
    def attack_for(self, step: int, alpha_scale: Optional[float] = None):
        """The attack at optimizer step `step`: eps and iterations after warm-up; an explicit
        step size scales with eps and with `alpha_scale` (default: the guard's `self.alpha_scale`)."""
        scale = self.alpha_scale if alpha_scale is None else float(alpha_scale)
        a = self.attack_cfg
        eps = warmup(float(a.eps), step, self.eps_warmup)
        steps = max(1, round(warmup(float(a.steps), step, self.steps_warmup))) if a.steps else a.steps
        alpha = None if a.alpha is None else float(a.alpha) * (eps / a.eps if a.eps else 1.0)
        if alpha is None and scale != 1.0:
            alpha = self._default_alpha(eps, steps)
        if alpha is not None:
            alpha *= scale
        key = (eps, steps, alpha)
        if self._cache[0] != key:
            self._cache = (key, create_attack(a.name, eps=eps, alpha=alpha, steps=steps, norm=a.norm,
                                              random_start=a.random_start, restarts=a.restarts, loss=a.loss,
                                              model_mode=a.model_mode, **dict(a.kwargs or {})))
        return self._cache[1]

    def _default_alpha(self, eps, steps):
        atk = create_attack(self.attack_cfg.name, eps=eps, steps=steps, norm=self.attack_cfg.norm)
        return float(getattr(atk, "alpha", eps))

    def perturb(self, x, y, ctx, objective: Optional[Callable] = None):
        """x_adv for this step (attack labels per `attack_target`, per-sample random starts)."""
        target = attack_labels(ctx.attack_model, x, y, self.target)
        return self.attack_for(ctx.step)(ctx.attack_model, x, target, generator=ctx.rng.fork("attack"),
                                         objective=objective)

    def mix_clean(self, model, x, y, adv_loss, info):
        if self.clean_weight <= 0:
            return adv_loss
        clean = soft_ce(model(x), y, self.label_smoothing)
        info["clean_loss"] = float(clean.detach())
        return (1 - self.clean_weight) * adv_loss + self.clean_weight * clean


def pgd_at_loss(model, x, y, attack, *, attack_model=None, generator=None, clean_weight=0.0,
                label_smoothing=0.0) -> MethodOutput:
    """Functional PGD-AT: CE at attack(x) (attack run on `attack_model`, default `model`)."""
    x_adv = attack(attack_model or model, x, hard_labels(y), generator=generator)
    logits = model(x_adv)
    loss, info = soft_ce(logits, y, label_smoothing), {}
    if clean_weight > 0:
        clean = soft_ce(model(x), y, label_smoothing)
        info["clean_loss"] = float(clean.detach())
        loss = (1 - clean_weight) * loss + clean_weight * clean
    return MethodOutput(loss, logits, info)


@register_method("pgd_at")
class PGDAdversarialTraining(AdversarialMethod):
    name = "pgd_at"
    events = (Event.LOSS,)

    def loss(self, model, x, y, ctx):
        x_adv = self.perturb(x, y, ctx)
        logits = model(x_adv)
        info = {}
        loss = self.mix_clean(model, x, y, soft_ce(logits, y, self.label_smoothing), info)
        return MethodOutput(loss, logits, info)
