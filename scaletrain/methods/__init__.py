"""Robust-training methods.

A method turns a batch into a loss. It may transform the batch (augment,
mix, add noise), run an attack on the unwrapped module, and reshape the loss.
Methods are plain PyTorch: they never see distributed code.

Contract::

    method.loss(model, x, y, ctx) -> MethodOutput(loss, logits, info)

`model` is the training forward (the engine; gradients flow to parameters);
`ctx` is the trainer's StepContext: `ctx.attack_model` is the unwrapped
module (attacks take input gradients on it, see the GUIDE pitfall on
DeepSpeed); `ctx.step`, `ctx.epoch`, `ctx.stage` say where the loop is.
The trainer already runs `loss` under the engine's autocast.
"""
from __future__ import annotations

from ..registry import Registry
from .base import Method, MethodOutput

METHODS = Registry("method", "method.name")
register_method = METHODS.register


def create_method(cfg) -> Method:
    """Build a method from a `MethodConfig`."""
    from . import adversarial, standard  # noqa: F401  (register built-ins)
    return METHODS.create(cfg.name, cfg)


def available():
    from . import adversarial, standard  # noqa: F401
    return METHODS.names()


__all__ = ["Method", "MethodOutput", "create_method", "register_method", "available"]
