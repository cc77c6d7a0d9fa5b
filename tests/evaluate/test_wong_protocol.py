"""bench/wong_eval.py: Wong et al.'s MNIST evaluation keeps, per sample, the restart of largest
cross-entropy, which can be a restart that did NOT fool the model while another one did."""
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from wong_eval import wong_evaluate_batch, wong_restart  # noqa: E402


class Toy(nn.Module):
    """3 classes, label 0, on the scalar z = mean pixel. z >= 0.5: class 0 wins by 0.01 and the
    gradient is 0 (correct, cross-entropy ~ ln 3 = 1.10). z < 0.5: class 1 wins by at most 0.03
    (fooled, cross-entropy ~ ln 2 = 0.70)."""

    def forward(self, x):
        z = x.flatten(1).mean(1)
        right = torch.stack([torch.full_like(z, 0.01), 0 * z, 0 * z], 1)
        wrong = torch.stack([0 * z, 0.1 * (0.5 - z) + 1e-3, 0 * z - 10], 1)
        return torch.where((z >= 0.5)[:, None], right, wrong)


def test_max_loss_selection_keeps_an_unbroken_restart():
    x, y = torch.full((40, 1, 2, 2), 0.5), torch.zeros(40, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    r = wong_evaluate_batch(Toy(), x, y, eps=0.3, alpha=0.01, iters=5, restarts=10, generator=gen)
    assert r["clean"].all()
    # P(a restart starts at z < 0.5) = 1/2: with 10 restarts almost every sample is fooled by one
    # of them (any-restart count) and also has one unfooled restart of higher loss (their count)
    assert int(r["any_restart"].sum()) <= 2
    assert int(r["wong"].sum()) >= 38


def test_only_correct_samples_move_and_one_restart_counts_alike():
    x, y = torch.full((40, 1, 2, 2), 0.5), torch.zeros(40, dtype=torch.long)
    gen = torch.Generator().manual_seed(1)
    start = torch.Generator().manual_seed(1)
    d0 = (torch.rand(x.shape, generator=start) * 2 - 1) * 0.3
    delta = wong_restart(Toy(), x, y, 0.3, 0.01, 5, gen)
    fooled_at_start = (x + d0).flatten(1).mean(1) < 0.5
    # fooled samples are frozen at their start; correct ones have zero gradient here: nothing moves
    assert torch.equal(delta, d0)
    assert fooled_at_start.any() and (~fooled_at_start).any()
    r = wong_evaluate_batch(Toy(), x, y, eps=0.3, alpha=0.01, iters=5, restarts=1,
                            generator=torch.Generator().manual_seed(1))
    assert torch.equal(r["wong"], r["any_restart"])
    assert torch.equal(r["wong"], ~fooled_at_start)
