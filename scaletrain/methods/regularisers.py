"""Losses and output regularisers, as functions of (logits, labels) (plain PyTorch).

`y` is either hard labels (N,) or class probabilities (N, C) (mixed labels from CutMix/Mixup).

* Label smoothing (Szegedy et al., "Rethinking the Inception Architecture", CVPR 2016):
  target (1 - s) * onehot(y) + s / C; `F.cross_entropy(..., label_smoothing=s)`.
* Confidence penalty (Pereyra et al., "Regularizing Neural Networks by Penalizing Confident
  Output Distributions", ICLR 2017 workshop, eq. (2)): L = CE - beta * H(p),
  H(p) = -sum_c p_c log p_c, i.e. low-entropy (over-confident) outputs are penalised.
* Huber loss (Huber, "Robust Estimation of a Location Parameter", 1964) on the softmax output
  against the (smoothed) one-hot target, summed over classes:
  sum_c h_delta(p_c - t_c), h_delta(r) = r^2 / 2 if |r| <= delta else delta (|r| - delta / 2).
  Bounded gradients in the logits: a label-noise-robust alternative to CE (with delta >= 1
  it is half the Brier score).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .mixing import one_hot


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(logits)) per sample, in nats."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def smoothed_targets(y: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    t = one_hot(y, num_classes)
    return t * (1 - label_smoothing) + label_smoothing / num_classes


def huber_loss(logits: torch.Tensor, y: torch.Tensor, delta: float = 1.0, label_smoothing: float = 0.0,
               reduction: str = "mean") -> torch.Tensor:
    """sum_c Huber_delta(softmax(logits)_c - target_c), averaged over the batch."""
    p = F.softmax(logits.float(), dim=1)
    t = smoothed_targets(y, p.shape[1], label_smoothing)
    per = F.huber_loss(p, t, reduction="none", delta=delta).sum(1)
    return per.mean() if reduction == "mean" else per


def classification_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "ce", label_smoothing: float = 0.0,
                        huber_delta: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """The training loss every method uses for its clean/adversarial term: `ce` or `huber`."""
    if kind == "ce":
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing, reduction=reduction)
    if kind == "huber":
        return huber_loss(logits, y, huber_delta, label_smoothing, reduction)
    raise ValueError(f"unknown loss '{kind}'; use ce or huber")


def confidence_penalty(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """-beta * mean entropy: add it to a loss to penalise confident outputs (Pereyra et al. 2017)."""
    return -beta * entropy(logits).mean()
