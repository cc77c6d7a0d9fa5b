"""Standard (non-robust) training: cross-entropy on clean inputs."""
from __future__ import annotations

import torch.nn.functional as F

from . import register_method
from .base import Method, MethodOutput


@register_method("standard")
class Standard(Method):
    name = "standard"

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.label_smoothing = float((cfg.kwargs if cfg is not None else {}).get("label_smoothing", 0.0))

    def loss(self, model, x, y, ctx):
        logits = model(x)
        return MethodOutput(F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits, {})
