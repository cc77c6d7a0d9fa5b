"""Shared fixtures: small shard sets written once per test session into tmp folders."""
from __future__ import annotations

import pytest

from data_helpers import digits_cfg
from scaletrain.data import clear_cache, prepare


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """sklearn digits, 100 samples per shard: train 1438 (15 shards), test 359 (4 shards)."""
    root = tmp_path_factory.mktemp("shards") / "digits"
    prepare(digits_cfg(root), progress=False)
    return root


@pytest.fixture(scope="session")
def digits_source():
    from scaletrain.data.sources import load_digits

    return load_digits()


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()
