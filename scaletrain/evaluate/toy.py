"""A small trained model on scikit-learn's digits, for tests, benchmarks and examples.

Trains the default ``ModelConfig`` CNN (``digits_cnn``) with plain PyTorch in a few
seconds on a CPU; nothing is downloaded (the digits ship with scikit-learn).
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional, Tuple

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


def trained_digits_model(seed: int = 0, epochs: int = 8, n_train: int = 1400, width: int = 32,
                         cache_dir: Optional[str] = None):
    """A fresh ``digits_cnn`` (eval mode) with weights trained on the first ``n_train`` digits
    (cached per process, and in ``cache_dir`` if given); about 96% test accuracy."""
    from ..config.schema import ModelConfig
    from ..models import create_model
    model = create_model(ModelConfig(width=width))
    path = os.path.join(cache_dir, f"digits_cnn_s{seed}_e{epochs}_n{n_train}_w{width}.pt") if cache_dir else None
    if path and os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model.load_state_dict(_trained_state(seed, epochs, n_train, width))
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model.eval()
