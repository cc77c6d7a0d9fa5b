import pytest
import torch

from scaletrain.evaluate.toy import digits_split, trained_digits_model


@pytest.fixture(scope="session")
def digits_model(request):
    """The digits CNN (width 16 to keep CI fast) trained for a few seconds (~96% test accuracy),
    eval mode. The weights are deterministic; pytest's cache keeps them between sessions."""
    return trained_digits_model(width=16, epochs=5, cache_dir=str(request.config.cache.mkdir("scaletrain_digits")))


@pytest.fixture(scope="session")
def digits_test():
    """300 held-out digits (x in [0, 1], y)."""
    _, (x, y) = digits_split()
    return x[:300].clone(), y[:300].clone()

