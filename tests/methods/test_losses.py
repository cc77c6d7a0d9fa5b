"""TRADES and MART losses against values computed by hand on tiny tensors, and the schedules."""
import math

import pytest
import torch

from scaletrain.methods.adversarial import warmup
from scaletrain.methods.free import free_at_update
from scaletrain.methods.trades import kl_per_sample, mart_terms, trades_objective, trades_terms

CLEAN = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
ADV = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
Y = torch.tensor([0, 1])


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _by_hand():
    """Per-sample CE, KL(p || p'), MART's boosted CE and weight, from the formulas in plain Python."""
    out = []
    for c, a, y in zip(CLEAN.tolist(), ADV.tolist(), Y.tolist()):
        p, q = _softmax(c), _softmax(a)
        ce_clean, ce_adv = -math.log(p[y]), -math.log(q[y])
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        top_other = max(qk for k, qk in enumerate(q) if k != y)
        out.append(dict(ce_clean=ce_clean, kl=kl, bce=ce_adv - math.log(1 - top_other), w=1 - p[y]))
    return out


def test_kl_matches_hand_computation():
    h = _by_hand()
    torch.testing.assert_close(kl_per_sample(CLEAN, ADV), torch.tensor([r["kl"] for r in h]))
    # the TRADES inner objective is KL(f(x) || f(x')), labels unused
    torch.testing.assert_close(trades_objective(ADV, None, CLEAN), torch.tensor([r["kl"] for r in h]))


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_loss_matches_hand_computation(beta):
    h = _by_hand()
    want_nat = sum(r["ce_clean"] for r in h) / 2
    want_rob = sum(r["kl"] for r in h) / 2
    loss, nat, rob = trades_terms(CLEAN, ADV, Y, beta)
    assert float(nat) == pytest.approx(want_nat, rel=1e-6)
    assert float(rob) == pytest.approx(want_rob, rel=1e-6)
    assert float(loss) == pytest.approx(want_nat + beta * want_rob, rel=1e-6)


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_mart_loss_matches_hand_computation(beta):
    h = _by_hand()
    want = sum(r["bce"] + beta * r["kl"] * r["w"] for r in h) / 2
    loss, bce, rob = mart_terms(CLEAN, ADV, Y, beta)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(bce) == pytest.approx(sum(r["bce"] for r in h) / 2, rel=1e-6)
    assert float(rob) == pytest.approx(sum(r["kl"] * r["w"] for r in h) / 2, rel=1e-6)


def test_losses_are_differentiable_and_zero_robust_term_without_perturbation():
    logits = CLEAN.clone().requires_grad_(True)
    loss, _, rob = trades_terms(logits, logits, Y, 6.0)
    assert float(rob) == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_schedules_and_free_at_update():
    assert [warmup(0.3, t, 3) for t in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert warmup(0.3, 0, 0) == 0.3
    d = free_at_update(torch.tensor([0.0, 0.15, -0.15]), torch.tensor([1.0, 1.0, -2.0]), eps=0.2, alpha=0.1)
    torch.testing.assert_close(d, torch.tensor([0.1, 0.2, -0.2]))
