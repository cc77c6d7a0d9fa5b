"""Adversarial attacks: ``attack(model, x, y, generator=None) -> x_adv``.

Build one by name (timm-style registry)::

    atk = create_attack("pgd", eps=0.1, steps=10)        # or attack_from_config(cfg.method.attack)
    x_adv = atk(model, x, y, generator=torch.Generator().manual_seed(0))

or call a functional form (``fgsm``, ``pgd``, ``apgd``, ``deepfool``). The contract
(bounds, modes, gradients, precision, randomness) is in ``base.py`` and docs/attacks.md.
"""
from __future__ import annotations

import inspect

from ..errors import ConfigError
from ..registry import Registry
from .base import Attack, ModelMode, dlr_loss, margin, per_sample_loss, project  # noqa: F401
from .apgd import APGD, APGDCE, APGDDLR, APGDT, apgd  # noqa: F401
from .deepfool import DeepFool, deepfool  # noqa: F401
from .gradient import BIM, FGSM, FGSMRS, MIM, PGD, fgsm, pgd  # noqa: F401

ATTACKS = Registry("attack", "method.attack.name")
register_attack = ATTACKS.register

for _cls in (FGSM, FGSMRS, BIM, PGD, MIM, APGD, APGDCE, APGDDLR, APGDT, DeepFool):
    register_attack(_cls.name)(_cls)

# arguments every attack is offered; an attack that has no use for one ignores it
_COMMON = ("alpha", "steps", "norm", "random_start", "restarts", "loss", "model_mode", "targeted")


def create_attack(name: str, *, eps: float, alpha=None, steps=None, norm: str = "linf",
                  random_start=None, restarts=None, loss: str = "ce", model_mode: str = "eval",
                  targeted: bool = False, **kw) -> Attack:
    """Build the attack registered as ``name``.

    The common arguments (alpha, steps, norm, random_start, restarts, loss, model_mode,
    targeted; ``None`` = the attack's own default) are passed to attacks that take them and ignored by those that have no use
    for them (e.g. ``fgsm`` ignores steps); attack-specific keywords (``schedule``,
    ``decay``, ``overshoot``, ``track_best``...) must be accepted by the attack, else a
    ``ConfigError`` names them.
    """
    cls = ATTACKS.get(name)
    eot = kw.pop("eot", 1)   # every attack: gradients averaged over `eot` forwards (Attack.loss_and_grad)
    if not isinstance(eot, int) or isinstance(eot, bool) or eot < 1:
        raise ConfigError(f"attack '{name}': eot must be an integer >= 1, got {eot!r}")
    params = inspect.signature(cls.__init__).parameters
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = set(params) if not takes_var_kw else _accepted_names(cls)
    common = dict(alpha=alpha, steps=steps, norm=norm, random_start=random_start, restarts=restarts,
                  loss=loss, model_mode=model_mode, targeted=targeted)
    # None = "the attack's own default" (e.g. steps=10 for PGD, 100 for APGD; no random start for BIM/MIM)
    args = {k: v for k, v in common.items() if k in accepted and v is not None}
    unknown = sorted(k for k in kw if k not in accepted)
    if unknown:
        raise ConfigError(f"key 'method.attack.kwargs': attack '{name}' does not take {', '.join(unknown)}")
    if targeted and "targeted" not in accepted:
        raise ConfigError(f"key 'method.attack': attack '{name}' has no targeted mode")
    args.update(kw)
    atk = cls(eps=eps, **args)
    atk.eot_samples = eot
    return atk


def _accepted_names(cls):
    """Keyword names accepted along the MRO (for classes that forward **kw to a parent)."""
    names = set()
    for c in cls.__mro__:
        if "__init__" in c.__dict__ and c is not object:
            names |= {n for n, p in inspect.signature(c.__init__).parameters.items()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
            if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(c.__init__).parameters.values()):
                break
    return names


def attack_from_config(cfg) -> Attack:
    """Build the attack of an ``AttackConfig`` (section ``method.attack``)."""
    return create_attack(cfg.name, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, norm=cfg.norm,
                         random_start=cfg.random_start, restarts=cfg.restarts, loss=cfg.loss,
                         model_mode=cfg.model_mode, **dict(cfg.kwargs or {}))


def available():
    return ATTACKS.names()


__all__ = ["Attack", "ATTACKS", "register_attack", "create_attack", "attack_from_config", "available",
           "fgsm", "pgd", "apgd", "deepfool", "ModelMode", "project", "per_sample_loss", "margin", "dlr_loss"]
