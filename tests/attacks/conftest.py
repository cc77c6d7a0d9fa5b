import pytest
import torch

from scaletrain.evaluate.toy import digits_split, trained_digits_model


@pytest.fixture(scope="session")
def digits_model(request):
    """The digits CNN (width 16 to keep CI fast) trained for a few seconds (~96% test accuracy),
    eval mode. The weights are deterministic; pytest's cache keeps them between sessions."""
    import os
    path = os.path.join(str(request.config.cache.mkdir("scaletrain_digits_cnn")), "w16_e5_s0.pt")
    if os.path.exists(path):
        from scaletrain.config.schema import ModelConfig
        from scaletrain.models import create_model
        model = create_model(ModelConfig(width=16))
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = trained_digits_model(width=16, epochs=5)
    torch.save(model.state_dict(), path)
    return model


@pytest.fixture(scope="session")
def digits_test():
    """300 held-out digits (x in [0, 1], y)."""
    _, (x, y) = digits_split()
    return x[:300].clone(), y[:300].clone()


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()
