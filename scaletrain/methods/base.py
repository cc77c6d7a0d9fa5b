"""Base types shared by all methods.

`ctx` is the trainer's `scaletrain.engine.trainer.StepContext`: it carries
`attack_model` (the unwrapped module: attacks take input gradients on it),
`engine`, `stage`, `epoch`, `step`, a per-method `state` dict and
`request_rollback()`. Optional method attributes the loop honours:
`replays`, `after_backward(ctx)`, `after_step(ctx)` (see engine/trainer.py).
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple

import torch


class MethodOutput(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor                         # logits used for training accuracy
    info: Dict[str, Any]                         # extra scalars to log


class Method:
    """A robust-training method: batch -> loss. Subclasses override `loss`."""

    name = "method"

    def __init__(self, cfg=None):
        self.cfg = cfg

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, ctx) -> MethodOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")
