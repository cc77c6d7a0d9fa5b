"""Continuous-depth models: solver order, SDE -> ODE at sigma 0, DEQ implicit gradients, stability."""
import math

import pytest
import torch
import torch.nn.functional as F

from scaletrain.config import load_config
from scaletrain.errors import ConfigError
from scaletrain.models import create_model
from scaletrain.models.deq import anderson, fixed_point_iter
from scaletrain.models.ode import odeint, odeint_fixed
from scaletrain.models.resnet_ode import AntisymmetricConv


def _model(name, *over):
    return create_model(load_config(None, [f"model.name={name}", "model.image_size=8", "model.width=8",
                                           *over]).model)


def _linear_ode():
    torch.manual_seed(0)
    A = torch.randn(4, 4, dtype=torch.float64) * 0.5
    y0 = torch.randn(3, 4, dtype=torch.float64)
    exact = y0 @ torch.linalg.matrix_exp(A).T  # y(1) = exp(A) y0
    return (lambda t, y: y @ A.T), y0, exact


def test_rk4_fourth_order_on_linear_ode():
    f, y0, exact = _linear_ode()
    errs = [float((odeint_fixed(f, y0, 0.0, 1.0, n, "rk4") - exact).abs().max()) for n in (8, 16, 32)]
    ratios = [errs[i] / errs[i + 1] for i in range(2)]
    assert all(14.0 < r < 18.0 for r in ratios), (errs, ratios)   # 2^4 = 16 per halving of h
    e_euler = [float((odeint_fixed(f, y0, 0.0, 1.0, n, "euler") - exact).abs().max()) for n in (64, 128)]
    assert 1.8 < e_euler[0] / e_euler[1] < 2.2                    # first order


def test_adaptive_and_adjoint_match_exact():
    f, y0, exact = _linear_ode()
    mod = torch.nn.Linear(1, 1)  # adjoint needs a module with parameters for adjoint_params
    func = type("F", (torch.nn.Module,), {"forward": lambda self, t, y: f(t, y)})()
    func.p = mod.weight
    out = odeint(func, y0, 1.0, "dopri5", rtol=1e-8, atol=1e-10)
    assert float((out - exact).abs().max()) < 1e-6
    out = odeint(func, y0, 1.0, "rk4", steps=32, adjoint=True)
    assert float((out - exact).abs().max()) < 1e-5


@pytest.mark.parametrize("diffusion", ["additive", "multiplicative"])
def test_sde_with_sigma_zero_equals_ode_euler(diffusion):
    torch.manual_seed(0)
    node = _model("node_cnn", "model.kwargs={solver: euler, steps: 5}")
    sde = _model("sde_cnn", f"model.kwargs={{sigma: 0.0, steps: 5, diffusion: {diffusion}}}")
    sde.load_state_dict(node.state_dict())
    x = torch.rand(4, 1, 8, 8)
    node.train(), sde.train()  # training mode: the SDE's noise path is active
    assert torch.allclose(node(x), sde(x), atol=1e-6)


def test_sde_noise_is_seeded_and_averaged_at_test():
    a = _model("sde_cnn", "model.kwargs={sigma: 0.5, test_noise: true, test_samples: 4, noise_seed: 3}",
               "eval.eot_samples=2").eval()
    b = _model("sde_cnn", "model.kwargs={sigma: 0.5, test_noise: true, test_samples: 4, noise_seed: 3}",
               "eval.eot_samples=2").eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 1, 8, 8)
    ya = a(x)
    assert torch.equal(ya, b(x))                   # same seed, same noise
    assert not torch.equal(ya, a(x))               # the sequence moves on
    assert torch.allclose(ya.exp().sum(1), torch.ones(4), atol=1e-5)  # log of averaged probabilities
    a.test_noise = False
    assert torch.equal(a(x), a(x))                 # noise off at test by default


def test_deq_solvers_reach_the_fixed_point_and_anderson_is_faster():
    torch.manual_seed(0)
    W = torch.randn(16, 16) * 0.9 / math.sqrt(16) * 0.9
    x = torch.randn(8, 16)
    f = lambda z: torch.tanh(z @ W.T + x)  # noqa: E731  (a contraction)
    z1, it1, r1 = fixed_point_iter(f, torch.zeros_like(x), 200, 1e-6)
    z2, it2, r2 = anderson(f, torch.zeros_like(x), 200, 1e-6)
    assert r1 < 1e-6 and r2 < 1e-6 and torch.allclose(z1, z2, atol=1e-5)
    assert it2 < it1


@pytest.mark.parametrize("solver", ["fixed_point", "anderson"])
def test_deq_implicit_gradient_matches_unrolled(solver):
    torch.manual_seed(0)
    m = _model("deq_cnn", "model.width=4", f"model.kwargs={{solver: {solver}, max_iter: 60, tol: 1e-9, "
                          "backward_max_iter: 60, backward_tol: 1e-9}").double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    m.train()
    F.cross_entropy(m(x), torch.tensor([1, 2])).backward()
    g_impl = [p.grad.clone() for p in m.deq.parameters()]
    m.zero_grad()
    # reference: backpropagate through 60 plain iterations from zero (they converge: contraction)
    h = m.stem(m.normalize(x))
    z = torch.zeros_like(h)
    for _ in range(60):
        z = m.deq.f(z, h)
    F.cross_entropy(m.head(z), torch.tensor([1, 2])).backward()
    for a, b in zip(g_impl, [p.grad for p in m.deq.parameters()]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8)
    assert m.deq.stats["forward_residual"] < 1e-6 and m.deq.stats["backward_residual"] < 1e-6


def test_antisymmetric_operator_is_antisymmetric():
    torch.manual_seed(0)
    layer = AntisymmetricConv(4, gamma=0.0)
    u, v = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    K = lambda x: F.conv2d(x, layer.weight, padding=1) - F.conv_transpose2d(x, layer.weight, padding=1)  # noqa
    assert abs(float((K(u) * v).sum() + (u * K(v)).sum())) < 1e-4   # <Ku, v> = -<u, Kv>
    assert abs(float((K(u) * u).sum())) < 1e-4


def test_resnet_ode_step_size_and_depth():
    m = _model("resnet_ode", "model.kwargs={depth: 4, shared_weights: true, antisymmetric: true}").eval()
    assert m.integration()["step_size"] == 0.25
    x = torch.rand(2, 1, 8, 8)
    y4 = m(x)
    m.set_integration(steps=8)
    assert m.integration() == {"solver": "euler", "steps": 8, "step_size": 0.125, "t1": 1.0}
    assert (m(x) - y4).abs().max() > 0
    m2 = _model("resnet_ode", "model.kwargs={depth: 4}")
    with pytest.raises(ValueError, match="shared_weights"):
        m2.set_integration(steps=8)


def test_continuous_model_config_errors():
    with pytest.raises(ConfigError, match="'model.kwargs.solver'"):
        load_config(None, ["model.name=node_cnn", "model.kwargs={solver: rk5}"])
    with pytest.raises(ConfigError, match="'model.kwargs.diffusion'"):
        load_config(None, ["model.name=sde_cnn", "model.kwargs={diffusion: cubic}"])
    with pytest.raises(ConfigError, match="'model.kwargs.steps'"):
        load_config(None, ["model.name=node_cnn", "model.kwargs={steps: 0}"])
    with pytest.raises(ConfigError, match="'model.kwargs.solver'"):
        load_config(None, ["model.name=deq_cnn", "model.kwargs={solver: newton}"])
