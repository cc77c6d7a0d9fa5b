"""Randomized-smoothing certification against the closed form of a linear classifier.

For f(x) = argmax(z0, z1) with z0 - z1 = w.x + b, the smoothed classifier's
probability of class 0 under N(0, sigma^2 I) noise is Phi((w.x + b) / (sigma ||w||)),
so the exact certified radius sigma * Phi^-1(pA) is the distance |w.x + b| / ||w||
to the decision boundary (Cohen et al. 2019, section 3.1)."""
import math

import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from scaletrain.config.schema import EvalConfig
from scaletrain.evaluate import evaluate_model
from scaletrain.evaluate.certify import certify, lower_confidence_bound

SIGMA = 0.5


def linear_model():
    torch.manual_seed(0)
    d = 16
    w = torch.randn(d)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([w / 2, -w / 2]))
        lin.bias.copy_(torch.tensor([0.1, -0.1]))
    return nn.Sequential(nn.Flatten(), lin).eval(), w, 0.2


def point_at(w, b, dist):
    """A 1 x 4 x 4 input at signed distance ``dist`` from the boundary w.x + b = 0."""
    x0 = torch.full((16,), 0.5)
    s = (w @ x0 + b) / w.norm()
    return (x0 + (dist - s) * w / w.norm()).view(1, 4, 4)


def test_lower_confidence_bound_is_clopper_pearson():
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert lower_confidence_bound(90, 100, 0.001) == pytest.approx(beta.ppf(0.001, 90, 11))
    assert lower_confidence_bound(100, 100, 0.01) == pytest.approx(0.01 ** (1 / 100))


@pytest.mark.parametrize("dist", [0.15, 0.4, 0.75])
def test_radius_matches_closed_form(dist):
    model, w, b = linear_model()
    x = point_at(w, b, dist)
    n, alpha = 20000, 0.001
    pred, radius, n_a = certify(model, x, SIGMA, 100, n, alpha, batch=5000,
                                generator=torch.Generator().manual_seed(0))
    p_true = norm.cdf(dist / SIGMA)
    # the estimation count is Binomial(n, pA): within 4.5 standard deviations
    assert abs(n_a / n - p_true) < 4.5 * math.sqrt(p_true * (1 - p_true) / n)
    assert pred == 0
    # the radius is exactly sigma * Phi^-1 of the Clopper-Pearson bound of the observed count ...
    assert radius == pytest.approx(SIGMA * norm.ppf(beta.ppf(alpha, n_a, n - n_a + 1)), rel=1e-9)
    # ... a lower bound of the true distance, close to it for n = 20000
    assert radius <= dist + 1e-9
    assert radius == pytest.approx(dist, abs=0.1 * SIGMA)


def test_other_side_abstain_and_saturation():
    model, w, b = linear_model()
    pred, radius, _ = certify(model, point_at(w, b, -0.4), SIGMA, 100, 5000, 0.001,
                              generator=torch.Generator().manual_seed(1))
    assert pred == 1 and 0 < radius <= 0.4
    pred, radius, _ = certify(model, point_at(w, b, 0.0), SIGMA, 100, 2000, 0.001,
                              generator=torch.Generator().manual_seed(2))
    assert pred == -1 and radius == 0.0          # on the boundary pA ~ 1/2: abstain
    n, alpha = 500, 0.001
    pred, radius, n_a = certify(model, point_at(w, b, 20.0), SIGMA, 10, n, alpha,
                                generator=torch.Generator().manual_seed(3))
    assert n_a == n and radius == pytest.approx(SIGMA * norm.ppf(alpha ** (1 / n)))


def test_certified_accuracy_in_suite():
    model, w, b = linear_model()
    dists = [0.6, 0.3, -0.35, 0.0, 0.9, -0.8]
    x = torch.stack([point_at(w, b, d) for d in dists])
    y = torch.tensor([0, 0, 1, 0, 1, 1])     # sample 4 is on the wrong side of its label
    cfg = EvalConfig(attacks=[], eps=[0.0], batch_size=4,
                     certify={"sigma": SIGMA, "n0": 50, "n": 4000, "alpha": 0.001, "radii": [0.0, 0.2, 0.5]})
    r = evaluate_model(model, [(x, y)], cfg, progress=False)
    c = r["certify"]
    recs = c["records"]
    assert [q["index"] for q in recs] == list(range(6))
    assert recs[3]["prediction"] == -1 and c["abstain"] == 1
    assert recs[4]["prediction"] == 0        # certified, but not the label
    for q, d in zip(recs, dists):
        if q["prediction"] >= 0:
            assert q["radius"] <= abs(d) + 1e-9 and q["radius"] > abs(d) - 0.15
    # by hand from the records: correct and radius >= r
    for r_, acc in zip(c["radii"], c["certified_acc"]):
        assert acc == sum(1 for q in recs if q["prediction"] == q["label"] and q["radius"] >= r_) / 6
    # correct and certified: 0.6, 0.3, -0.35, -0.8; of those only 0.6 and -0.8 reach radius 0.5
    assert c["certified_acc"] == pytest.approx([4 / 6, 4 / 6, 2 / 6])
    assert c["smoothed_acc"] == pytest.approx(4 / 6)
    # re-running gives the same records (noise seeded per global sample index)
    assert evaluate_model(model, [(x[:3], y[:3]), (x[3:], y[3:])], cfg, progress=False)["certify"] == c
