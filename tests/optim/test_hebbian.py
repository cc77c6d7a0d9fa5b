"""Krotov-Hopfield plasticity: the rule against a hand computation, the conv form as the dense rule
over patches, convergence to unit p-norm on a toy problem, and the hebbian method's options."""
import pytest
import torch

from scaletrain.config import load_config
from scaletrain.errors import ConfigError
from scaletrain.optim import hebbian as H


def test_dense_rule_matches_hand_computation():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.5], [-1.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p, delta = 3.0, 0.4
    cur = H.currents(w, v, p)          # sign(w)|w|^2 . v
    torch.testing.assert_close(cur, torch.tensor([[1.0, 0.25, -1.0], [-4.0, 0.25, 1.0]]))
    ds = H.plasticity(w, v, p, k=2, delta=delta)
    # sample 0: winner unit 0 (I=1), 2nd unit 1 (I=.25); sample 1: winner unit 2 (I=1), 2nd unit 1
    want = torch.zeros(3, 2)
    want[0] += v[0] - 1.0 * w[0]
    want[1] += -delta * (v[0] - 0.25 * w[1]) - delta * (v[1] - 0.25 * w[1])
    want[2] += v[1] - 1.0 * w[2]
    torch.testing.assert_close(ds, want)
    before = w.clone()
    H.apply_update(w, ds, eps=0.1)
    assert float((w - before).abs().max()) == pytest.approx(0.1)   # max-normalised step


def test_conv_rule_is_the_dense_rule_over_patches():
    torch.manual_seed(0)
    w = torch.randn(5, 2, 3, 3)
    x = torch.rand(3, 2, 6, 6)
    ds = H.conv_plasticity(w, x, p=3.0, k=2, delta=0.4, stride=1, padding=1)
    patches = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 18)
    assert patches.shape[0] == 3 * 36           # every (image, position) is a sample
    torch.testing.assert_close(ds, H.plasticity(w.view(5, -1), patches, 3.0, 2, 0.4).view_as(w))


def test_weights_converge_to_unit_p_norm_on_a_toy_problem():
    # 4 hidden units, inputs from 12 clusters: with the anti-Hebbian push of the runner-up
    # (Delta = 0.2) every unit wins somewhere and reaches sum |W|^3 = 1 (measured: within 1e-3
    # for seeds 0-3; without Delta most units stall, as Krotov & Hopfield report)
    g = torch.Generator().manual_seed(0)
    centers = torch.rand(12, 20, generator=g)
    w = 0.3 * torch.randn(4, 20, generator=g)
    total = 200
    for t in range(total):
        idx = torch.randint(0, 12, (32,), generator=g)
        v = centers[idx] + 0.05 * torch.rand(32, 20, generator=g)
        H.apply_update(w, H.plasticity(w, v, p=3.0, k=2, delta=0.2), H.linear_eps(0.05, t, total))
    norms = H.unit_norms(w, 3.0)
    assert H.convergence(w, 3.0, tol=0.01)["unconverged_fraction"] == 0.0, norms
    torch.testing.assert_close(norms, torch.ones(4), rtol=0, atol=0.01)


def test_hebbian_options_checked_at_load():
    with pytest.raises(ConfigError, match="key 'method.kwargs.p'"):
        load_config(None, ["method.name=hebbian", "method.kwargs.p=0.5"])
    with pytest.raises(ConfigError, match="key 'method.kwargs'.*speed"):
        load_config(None, ["method.name=hebbian", "method.kwargs.speed=1"])
    with pytest.raises(ConfigError, match="key 'engine.zero_stage'.*hebbian"):
        load_config(None, ["method.name=hebbian", "engine.zero_stage=3"])
    load_config(None, ["method.name=hebbian", "method.kwargs.supervised=pgd_at"])


@pytest.mark.parametrize("option", ["p=abc", "freeze=maybe", "k=2.5", "hebbian_epochs=x"])
def test_hebbian_options_are_typed(option):
    # untyped, these crashed with a TypeError (p=abc) or were taken silently (freeze=maybe -> True, k=2.5 -> 2)
    with pytest.raises(ConfigError, match=f"key 'method.kwargs.{option.split('=')[0]}'"):
        load_config(None, ["method.name=hebbian", f"method.kwargs.{option}"])


def test_hebbian_typed_options_reach_the_method():
    from scaletrain.methods import create_method
    m = create_method(load_config(None, ["method.name=hebbian", "method.kwargs.k=3", "method.kwargs.freeze=false",
                                         "method.kwargs.init_std=null"]).method)
    assert (m.k, m.freeze, m.init_std, m.p) == (3, False, None, 3.0)
