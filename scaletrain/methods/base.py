"""Base types shared by all methods."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn


@dataclass
class MethodContext:
    attack_model: nn.Module                      # unwrapped module (engine.module)
    generator: Optional[torch.Generator] = None  # randomness for attacks / augmentation
    step: int = 0
    epoch: int = 0
    stage: int = 0
    autocast: Optional[Callable] = None          # engine.autocast, for attack forwards


@dataclass
class MethodOutput:
    loss: torch.Tensor
    logits: torch.Tensor                         # logits used for training accuracy
    info: Dict[str, Any] = field(default_factory=dict)


class Method:
    """A robust-training method: batch -> loss. Subclasses override `loss`."""

    name = "method"

    def __init__(self, cfg=None):
        self.cfg = cfg

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext) -> MethodOutput:
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")
