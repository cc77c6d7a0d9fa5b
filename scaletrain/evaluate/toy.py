"""A small trained model on scikit-learn's digits, for tests, benchmarks and examples.

Trains the default ``ModelConfig`` CNN (``digits_cnn``) with plain PyTorch in a few
seconds on a CPU; nothing is downloaded (the digits ship with scikit-learn).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import torch


@lru_cache(maxsize=2)
def digits_tensors() -> Tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as (x float32 N x 1 x 8 x 8 in [0, 1], y int64)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    return torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target, dtype=torch.long)


def digits_split(n_train: int = 1400):
    x, y = digits_tensors()
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def _train(seed: int, epochs: int, n_train: int, width: int):
    from ..config.schema import ModelConfig
    from ..models import create_model
    (xt, yt), _ = digits_split(n_train)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = create_model(ModelConfig(width=width))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(xt.shape[0], generator=g)
        for i in range(0, xt.shape[0], 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return {k: v.clone() for k, v in model.state_dict().items()}


@lru_cache(maxsize=8)
def _trained_state(seed: int, epochs: int, n_train: int, width: int):
    return _train(seed, epochs, n_train, width)


def trained_digits_model(seed: int = 0, epochs: int = 8, n_train: int = 1400, width: int = 32):
    """A fresh ``digits_cnn`` (eval mode) with weights trained on the first ``n_train`` digits
    (cached per process, so repeated calls are free); about 96% test accuracy."""
    from ..config.schema import ModelConfig
    from ..models import create_model
    model = create_model(ModelConfig(width=width))
    model.load_state_dict(_trained_state(seed, epochs, n_train, width))
    return model.eval()
