"""Update equations of the Langevin optimizers on tiny tensors, against hand-computed values."""
import math

import pytest
import torch

from scaletrain.config import load_config
from scaletrain.errors import ConfigError
from scaletrain.optim import BAOAB, SGLD, CircleBAOAB, OrthogonalBAOAB, TemperatureSchedule
from scaletrain.optim.base import ConstraintRule
from scaletrain.optim.counter_rng import normal, philox4x32
from scaletrain.optim.langevin import STREAM_O, STREAM_SGLD


def _t(v):
    return torch.tensor([v], dtype=torch.int64)


def test_philox_known_answers_and_partition_invariance():
    # Random123 known-answer vectors for philox4x32-10
    out = philox4x32(_t(0x243f6a88), _t(0x85a308d3), _t(0x13198a2e), _t(0x03707344), 0xa4093822, 0x299f31d0)
    assert [int(x) for x in out] == [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
    out = philox4x32(_t(0), _t(0), _t(0), _t(0), 0, 0)
    assert [int(x) for x in out] == [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
    full = normal(3, 7, "layer.weight", 0, 1001)
    for a, b in [(0, 1), (1, 4), (3, 997), (500, 501), (998, 1001)]:   # any split: the same numbers
        assert torch.equal(normal(3, 7, "layer.weight", a, b - a), full[a:b])
    assert not torch.equal(normal(3, 8, "layer.weight", 0, 1001), full)       # step is a key
    assert not torch.equal(normal(3, 7, "layer.bias", 0, 1001), full)         # name is a key
    assert not torch.equal(normal(3, 7, "layer.weight", 0, 1001, stream=1), full)
    big = normal(0, 0, "w", 0, 200_000)
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01


def _param(vals):
    p = torch.nn.Parameter(torch.tensor(vals, dtype=torch.float32))
    return p


def test_sgld_step_matches_hand_computation():
    p = _param([[0.5, -1.0], [2.0, 0.25]])
    g = torch.tensor([[0.1, 0.2], [-0.3, 0.4]])
    h, T, seed = 0.05, 0.01, 11
    opt = SGLD([p], lr=h, temperature=T, seed=seed)
    want = p.detach().clone()
    for k in range(3):
        p.grad = g.clone()
        opt.step()
        z = normal(seed, k, "param0", 0, 4, STREAM_SGLD).view(2, 2)
        want = want - h * g + math.sqrt(2 * h * T) * z
    torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-7)


def test_sgld_at_zero_temperature_is_gradient_descent():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5, 3)), None
    b = torch.nn.Parameter(a.detach().clone())
    o1, o2 = SGLD([a], lr=0.1, temperature=0.0), torch.optim.SGD([b], lr=0.1)
    for _ in range(5):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        o1.step(), o2.step()
    assert torch.equal(a, b)


def test_baoab_steps_match_hand_computation_with_varying_step_size():
    p = _param([1.0, -2.0, 0.5])
    grads = [torch.tensor([0.3, -0.1, 0.2]), torch.tensor([-0.2, 0.4, 0.0])]
    hs, gamma, T, seed = [0.1, 0.05], 2.0, 0.5, 4
    opt = BAOAB([p], lr=hs[0], temperature=T, friction=gamma, seed=seed)
    q, v, h_prev = p.detach().clone().double(), torch.zeros(3, dtype=torch.float64), None
    for k, (g, h) in enumerate(zip(grads, hs)):
        for grp in opt.param_groups:
            grp["lr"] = h
        p.grad = g.clone()
        opt.step()
        c = math.exp(-gamma * h)
        z = normal(seed, k, "param0", 0, 3, STREAM_O).double()
        v = v - (h / 2 + (h_prev / 2 if h_prev else 0.0)) * g.double()   # B (+ previous closing B)
        q = q + h / 2 * v                                                 # A
        v = c * v + math.sqrt((1 - c * c) * T) * z                        # O
        q = q + h / 2 * v                                                 # A
        h_prev = h
    torch.testing.assert_close(p.detach().double(), q, rtol=0, atol=1e-6)


def test_zero_temperature_limit_and_cooling_schedule():
    s = TemperatureSchedule("linear", 1.0, 0.0, cooling_start=0.5, total_steps=11)
    assert s(0) == 1.0 and s(5) == 1.0 and s(10) == 0.0 and s(8) == pytest.approx(0.4)
    c = TemperatureSchedule("cosine", 2.0, 0.0, total_steps=5)
    assert c(0) == 2.0 and c(4) == 0.0 and c(2) == pytest.approx(1.0)
    # BAOAB with T -> 0 approaches the deterministic (T = 0) trajectory, with the noise scale sqrt(T)
    torch.manual_seed(1)
    grads = [torch.randn(20) for _ in range(4)]
    finals = {}
    for T in (0.0, 1e-6, 1e-10):
        p = torch.nn.Parameter(torch.ones(20))
        opt = BAOAB([p], lr=0.1, temperature=T, friction=1.0)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        finals[T] = p.detach().double()
    d6 = float((finals[1e-6] - finals[0.0]).abs().max())
    d10 = float((finals[1e-10] - finals[0.0]).abs().max())
    assert d6 > 0 and d10 < d6 / 30        # sqrt(1e-4) = 1/100 in exact arithmetic
    # momentum recursion at T = 0: one friction factor per step
    p = torch.nn.Parameter(torch.zeros(1))
    opt = BAOAB([p], lr=0.2, temperature=0.0, friction=0.5)
    p.grad = torch.ones(1)
    opt.step()
    c = math.exp(-0.1)
    assert float(p.detach()) == pytest.approx(-0.1 * 0.1 * (1 + c), rel=1e-6)   # q = h/2 v + h/2 c v, v = -h/2


def test_circle_constraint_and_hand_computed_rotation():
    w0 = torch.tensor([[0.3, -0.8], [1.5, 0.0]])       # 1.5 starts outside radius 1 and is clipped
    p = torch.nn.Parameter(w0.clone())
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    r, h, gamma = 1.0, 0.1, 1.0
    opt = CircleBAOAB([p], lr=h, temperature=0.0, friction=gamma, radius=r,
                      rule=ConstraintRule(constrain_output=True))
    p.grad = g.clone()
    opt.step()
    w = w0.clamp(-r, r).double()
    xi = torch.sqrt(r * r - w * w)
    theta = torch.atan2(w, xi)
    v = -(h / 2) * g.double() * xi / r
    theta = theta + (h / 2) * v / r
    v = math.exp(-gamma * h) * v
    theta = theta + (h / 2) * v / r
    torch.testing.assert_close(p.detach().double(), r * torch.sin(theta), rtol=0, atol=1e-6)
    torch.testing.assert_close(opt.state[p]["xi"].double(), r * torch.cos(theta), rtol=0, atol=1e-6)
    # many noisy steps at a small radius: |w| <= r and w^2 + xi^2 = r^2 hold to 1e-5 throughout
    torch.manual_seed(0)
    q = torch.nn.Parameter(torch.randn(4, 6))
    opt = CircleBAOAB([q], lr=0.3, temperature=0.1, friction=0.5, radius=0.2,
                      rule=ConstraintRule(constrain_output=True))
    for _ in range(30):
        q.grad = torch.randn(4, 6)
        opt.step()
        xi = opt.state[q]["xi"]
        assert float(q.detach().abs().max()) <= 0.2 + 1e-6
        assert float((q.detach() ** 2 + xi ** 2 - 0.04).abs().max()) < 1e-5 * 0.04 + 1e-7
    assert opt.max_violation < 1e-5


def test_orthogonal_constraint_tangent_momentum_and_excluded_layers():
    torch.manual_seed(0)
    conv = torch.nn.Parameter(torch.randn(4, 3, 3, 3))   # wide: 4 x 27 -> W W^T = I
    tall = torch.nn.Parameter(torch.randn(12, 5))        # tall: W^T W = I
    bias = torch.nn.Parameter(torch.randn(4))
    head = torch.nn.Parameter(torch.randn(3, 12))        # the last weight: unconstrained by default
    params = [conv, tall, bias, head]
    opt = OrthogonalBAOAB(params, lr=0.2, temperature=1e-3, friction=1.0, tolerance=1e-10)
    b0 = bias.detach().clone()
    for _ in range(10):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        wc = conv.detach().view(4, -1).double()
        torch.testing.assert_close(wc @ wc.T, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-5)
        wt = tall.detach().double()
        torch.testing.assert_close(wt.T @ wt, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-5)
        pm = opt.state[tall]["momentum"].double()        # RATTLE: Q^T P skew-symmetric
        s = wt.T @ pm
        assert float((s + s.T).abs().max()) < 1e-5
    assert not torch.equal(bias.detach(), b0)            # biases move (plain BAOAB), unconstrained
    wh = head.detach().double()
    assert float((wh @ wh.T - torch.eye(3, dtype=torch.float64)).abs().max()) > 0.1
    assert opt.max_violation < 1e-5 and opt.shake_fallbacks == 0
    assert opt.log_metrics()["shake_iterations"] >= 1


@pytest.mark.parametrize("override, key", [
    ("optim.langevin.temperature=-1", "optim.langevin.temperature"),
    ("optim.langevin.friction=0", "optim.langevin.friction"),
    ("optim.langevin.radius=0", "optim.langevin.radius"),
    ("optim.langevin.radius_first=-0.5", "optim.langevin.radius_first"),
    ("optim.langevin.tolerance=0", "optim.langevin.tolerance"),
    ("optim.langevin.temperature_schedule=warm", "optim.langevin.temperature_schedule"),
    ("optim.langevin.cooling_start=1.0", "optim.langevin.cooling_start"),
])
def test_langevin_keys_validated_at_load(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, [override])


def test_constrained_optimizers_refuse_zero3_at_load():
    with pytest.raises(ConfigError, match="key 'engine.zero_stage'.*orthogonal"):
        load_config(None, ["optim.name=orthogonal", "engine.zero_stage=3"])
    load_config(None, ["optim.name=sgld", "engine.zero_stage=3"])
