import pytest

from scaletrain.evaluate.toy import digits_split, trained_digits_model


@pytest.fixture(scope="session")
def digits_model(request):
    """The digits CNN (width 16) trained for a few seconds (~96% test accuracy), eval mode;
    deterministic weights, kept in pytest's cache between sessions."""
    return trained_digits_model(width=16, epochs=5, cache_dir=str(request.config.cache.mkdir("scaletrain_digits")))


@pytest.fixture(scope="session")
def digits_eval():
    """96 held-out digits as a list of (x, y) batches of 40 (the last one short)."""
    _, (x, y) = digits_split()
    x, y = x[:96].clone(), y[:96].clone()
    return [(x[i:i + 40], y[i:i + 40]) for i in range(0, 96, 40)]
