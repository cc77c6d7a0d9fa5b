"""Standard (non-robust) training: cross-entropy on clean inputs (`method.label_smoothing`)."""
from __future__ import annotations

from . import register_method
from .adversarial import soft_ce
from .base import Event, Method, MethodOutput
from ..errors import ConfigError


@register_method("standard")
class Standard(Method):
    name = "standard"
    events = (Event.LOSS,)

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.label_smoothing = float(cfg.label_smoothing) if cfg is not None else 0.0

    @classmethod
    def check_config(cls, cfg, key):
        if not 0.0 <= cfg.label_smoothing < 1.0:
            raise ConfigError(f"key '{key}.label_smoothing': must be in [0, 1), got {cfg.label_smoothing}")
        if dict(cfg.kwargs or {}):
            raise ConfigError(f"key '{key}.kwargs': standard takes no kwargs ({', '.join(cfg.kwargs)}); "
                              f"use {key}.label_smoothing")

    def loss(self, model, x, y, ctx):
        logits = model(x)
        return MethodOutput(soft_ce(logits, y, self.label_smoothing), logits, {})
