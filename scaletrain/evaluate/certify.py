"""Randomized-smoothing certification (Cohen, Rosenfeld & Kolter 2019, "Certified
adversarial robustness via randomized smoothing", ICML; algorithm CERTIFY).

The smoothed classifier is g(x) = argmax_c P(f(x + d) = c), d ~ N(0, sigma^2 I).
CERTIFY(f, sigma, x, n0, n, alpha):

1. draw n0 noisy copies, cA = the most frequent prediction (selection);
2. draw n fresh noisy copies, nA = how many are predicted cA (estimation);
3. pA = the one-sided (1 - alpha) Clopper-Pearson lower bound of the binomial
   proportion nA / n, i.e. the alpha quantile of Beta(nA, n - nA + 1);
4. if pA < 1/2 abstain, else return cA with L2 radius R = sigma * Phi^-1(pA).

With probability at least 1 - alpha over the noise, g predicts cA everywhere in the
L2 ball of radius R around x. Certified accuracy at radius r is the fraction of
samples with cA == y and R >= r (abstentions count as wrong). Noise is not clipped
to [0, 1], as in the paper. Every sample's noise comes from a generator seeded by
(eval seed, global sample index), so certification is rank-independent.

Configured by ``eval.certify``: ``{sigma, n0=100, n=1000, alpha=0.001,
radii=[0, 0.25, 0.5, 0.75, 1.0], max_samples=100, batch=1000}`` (empty = off).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from ..attacks import ModelMode
from ..errors import ConfigError

DEFAULTS = {"n0": 100, "n": 1000, "alpha": 0.001, "radii": [0.0, 0.25, 0.5, 0.75, 1.0], "max_samples": 100,
            "batch": 1000}


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    from scipy.stats import beta
    return 0.0 if n_a == 0 else float(beta.ppf(alpha, n_a, n - n_a + 1))


def radius(p_a: float, sigma: float) -> float:
    from scipy.stats import norm
    return float(sigma * norm.ppf(p_a))


@torch.no_grad()
def _counts(model, x: torch.Tensor, sigma: float, num: int, batch: int, generator, num_classes=None):
    counts = None
    left = num
    while left > 0:
        k = min(batch, left)
        xb = x.unsqueeze(0).expand(k, *x.shape)
        noise = torch.randn(xb.shape, generator=generator, device=generator.device, dtype=torch.float32)
        logits = model((xb + sigma * noise.to(x.device)).to(x.dtype)).float()
        c = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
        counts = c if counts is None else counts + c
        left -= k
    return counts


def certify(model, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float, *, batch: int = 1000,
            generator: Optional[torch.Generator] = None, model_mode: str = "eval") -> Tuple[int, float, int]:
    """CERTIFY for one input ``x`` (C x H x W): (prediction or -1 to abstain, radius, nA)."""
    gen = generator or torch.Generator(device=x.device).manual_seed(0)
    with ModelMode(model, model_mode):
        c_a = int(_counts(model, x, sigma, n0, batch, gen).argmax())
        n_a = int(_counts(model, x, sigma, n, batch, gen)[c_a])
    p_a = lower_confidence_bound(n_a, n, alpha)
    if p_a < 0.5:
        return -1, 0.0, n_a
    return c_a, radius(p_a, sigma), n_a


def settings(cert: Dict[str, Any]) -> Dict[str, Any]:
    cert = dict(cert)
    unknown = sorted(set(cert) - set(DEFAULTS) - {"sigma"})
    if unknown:
        raise ConfigError(f"key 'eval.certify': unknown setting(s) {', '.join(unknown)}; "
                          f"use sigma, {', '.join(DEFAULTS)}")
    if "sigma" not in cert or cert["sigma"] is None or float(cert["sigma"]) <= 0:
        raise ConfigError("key 'eval.certify.sigma': certification needs a noise level sigma > 0")
    s = {**DEFAULTS, **cert}
    s["sigma"] = float(s["sigma"])
    for k in ("n0", "n", "max_samples", "batch"):
        if int(s[k]) <= 0:
            raise ConfigError(f"key 'eval.certify.{k}': must be > 0, got {s[k]}")
        s[k] = int(s[k])
    if not 0.0 < float(s["alpha"]) < 1.0:
        raise ConfigError(f"key 'eval.certify.alpha': must be in (0, 1), got {s['alpha']}")
    s["alpha"] = float(s["alpha"])
    s["radii"] = sorted(float(r) for r in s["radii"])
    return s


def certify_batch_fn(cfg):
    s = settings(cfg.certify)

    def run(model, x, y, b, first) -> List[list]:
        from .suite import make_generator
        out = []
        for i in range(x.shape[0]):
            gi = first + i
            if gi >= s["max_samples"]:
                break
            gen = make_generator(x.device, cfg.seed, "certify", gi)
            pred, r, n_a = certify(model, x[i], s["sigma"], s["n0"], s["n"], s["alpha"], batch=s["batch"],
                                   generator=gen, model_mode=cfg.model_mode)
            out.append([gi, int(y[i]), pred, r, n_a])
        return out

    return run


def summarise(records: List[list], cert: Dict[str, Any]) -> Dict[str, Any]:
    s = settings(cert)
    m = len(records)
    ok = [r for r in records if r[2] == r[1]]
    radii_ok = sorted(r[3] for r in ok)
    return {
        "sigma": s["sigma"], "n0": s["n0"], "n": s["n"], "alpha": s["alpha"], "samples": m,
        "radii": s["radii"],
        "certified_acc": [sum(1 for r in ok if r[3] >= t) / max(m, 1) for t in s["radii"]],
        "abstain": sum(1 for r in records if r[2] == -1),
        "abstain_rate": sum(1 for r in records if r[2] == -1) / max(m, 1),
        "smoothed_acc": len(ok) / max(m, 1),
        "median_radius": radii_ok[(len(radii_ok) - 1) // 2] if radii_ok else None,
        "records": [{"index": r[0], "label": r[1], "prediction": r[2], "radius": r[3], "n_a": r[4]}
                    for r in records],
    }
