"""Helpers shared by the data tests (imported as a plain module: pytest puts this folder on sys.path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from scaletrain.config import DataConfig

REPO = Path(__file__).resolve().parents[2]
MNIST = REPO.parent / "shared" / "data" / "mnist"


def digits_cfg(root, **kw) -> DataConfig:
    kw.setdefault("shard_samples", 100)
    return DataConfig(root=str(root), **kw)


def all_keys(loader):
    return [k for _, _, keys in loader.iter_with_keys() for k in keys]


def pixels_u8(x):
    """float [0,1] batch back to the stored uint8 values (exact: x = u8 / 255)."""
    return np.rint(x.numpy() * 255.0).astype(np.uint8)
