"""Robust-training methods on an event contract (base.py; docs/methods.md).

A method declares the training events it acts on (`Event.BEFORE_FORWARD`, `LOSS`,
`AFTER_LOSS`, `AFTER_BACKWARD`, `AFTER_STEP`, `EPOCH_END`) and implements the matching
handlers; the trainer calls exactly those. Methods are plain PyTorch: `ctx.attack_model`
is the unwrapped module (attacks take input gradients there, see the GUIDE pitfall on
DeepSpeed), `ctx.rng` gives per-sample random numbers keyed by global sample index.

`create_method(cfg.method)` builds the main method and composes `method.extra` with it;
`check_method_config(cfg.method, key)` validates names, options and combinations at load.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry
from .base import Composed, Event, Method, MethodOutput, hard_labels

METHODS = Registry("method", "method.name")
register_method = METHODS.register


def _builtins():
    from . import adversarial, augment, fast, free, hebbian, loss_terms, standard, trades  # noqa: F401  (register built-ins)


def _extra_cfg(main_cfg, extra):
    """An add-on's own section: the main section with the add-on's name and kwargs."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(OmegaConf.to_container(main_cfg, resolve=True))
    cfg.name, cfg.kwargs, cfg.extra = extra.name, extra.kwargs, []
    return cfg


def create_method(cfg) -> Method:
    """Build a method from a `MethodConfig` (with `extra` add-ons composed after it)."""
    _builtins()
    main = METHODS.create(cfg.name, cfg)
    extras = list(cfg.get("extra", None) or [])
    if not extras:
        return main
    return Composed([main] + [METHODS.create(e.name, _extra_cfg(cfg, e)) for e in extras])


def check_method_config(cfg, key: str = "method") -> None:
    """Validate a method section at load: names, each method's own settings, the combination."""
    _builtins()
    cls = _get(cfg.name, f"{key}.name")
    if Event.LOSS not in cls.events:
        raise ConfigError(f"key '{key}.name': '{cfg.name}' does not compute a loss; put it in {key}.extra "
                          f"and choose a loss method as {key}.name")
    if cfg.get("huber_delta", None) is not None and cfg.name != "huber":
        raise ConfigError(f"key '{key}.huber_delta': {cfg.name} has no Huber loss (method.name=huber has)")
    cls.check_config(cfg, key)
    seen = {cfg.name}
    for i, e in enumerate(cfg.get("extra", None) or []):
        k = f"{key}.extra.{i}.name"
        ecls = _get(e.name, k)
        if Event.LOSS in ecls.events:
            raise ConfigError(f"key '{k}': '{e.name}' computes its own loss and cannot be combined with "
                              f"'{cfg.name}'; only one loss method per run")
        if e.name in seen:
            raise ConfigError(f"key '{k}': '{e.name}' appears twice")
        seen.add(e.name)
        ecls.check_config(_extra_cfg(cfg, e), f"{key}.extra.{i}")


def replays_for(cfg) -> int:
    """How many times the method of section `cfg` trains on each batch (Free AT: m)."""
    _builtins()
    return METHODS.get(cfg.name).replays_for(cfg)


def _get(name, key):
    if name not in METHODS:
        raise ConfigError(f"key '{key}': unknown method '{name}'; available: {', '.join(METHODS.names())}")
    return METHODS.get(name)


def available():
    _builtins()
    return METHODS.names()


__all__ = ["Method", "MethodOutput", "Event", "Composed", "hard_labels", "create_method", "register_method",
           "check_method_config", "available", "METHODS", "replays_for"]
