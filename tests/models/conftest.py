import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: OpenMP parallel regions only cost time (10x on the loaded 2-core CI machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
