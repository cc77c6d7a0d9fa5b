"""Sensitivity analysis of a trained classifier (`scaletrain analyze`, docs/evaluation.md).

All on the test set (the first `max_samples`), model in eval mode, inputs in [0, 1]:

- input gradient: mean over samples of ||grad_x CE(f(x), y)||_2 and ||.||_1 (the L1 norm is the
  first-order loss increase per unit of an L-inf perturbation);
- local Lipschitz estimate (Yang et al., "A closer look at accuracy vs. robustness", NeurIPS 2020,
  Sec. 4): L(x) = max over ||x' - x||_inf <= eps of ||f(x') - f(x)||_1 / ||x' - x||_inf, f the
  logits, maximised by `steps` signed-gradient ascent steps from a random start; mean and max;
- weight perturbation: every parameter tensor W gets W + r ||W|| u / ||u||, u ~ N(0, I) (a
  relative perturbation of size r, as in flatness studies, e.g. Wu et al., "Adversarial weight
  perturbation", 2020); the mean relative change of the logits ||f'(x) - f(x)||_2 / ||f(x)||_2,
  the fraction of changed predictions and the accuracy, averaged over `trials` draws;
- for models whose depth is an integration (`integration()` / `set_integration()`: node_cnn,
  sde_cnn, resnet_ode): clean and PGD accuracy, and function evaluations, as the number of
  steps (or the step size, or the adaptive tolerance) changes around the trained setting.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..attacks import create_attack


def _batches(loader: Iterable, max_samples: Optional[int], device) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    out, n = [], 0
    for x, y in loader:
        if max_samples is not None and n >= max_samples:
            break
        if max_samples is not None:
            x, y = x[:max_samples - n], y[:max_samples - n]
        out.append((x.to(device).float(), y.to(device)))
        n += x.shape[0]
    return out


def input_gradients(model, batches) -> Dict[str, float]:
    l1, l2, n = 0.0, 0.0, 0
    for x, y in batches:
        x = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        g = g.flatten(1)
        l1 += float(g.abs().sum(1).sum())
        l2 += float(g.norm(dim=1).sum())
        n += x.shape[0]
    return {"grad_l2_mean": l2 / n, "grad_l1_mean": l1 / n}


def local_lipschitz(model, batches, eps: float, steps: int = 10, seed: int = 0) -> Dict[str, float]:
    g = torch.Generator(device=batches[0][0].device).manual_seed(seed)
    vals = []
    alpha = 2.5 * eps / steps
    for x, _ in batches:
        with torch.no_grad():
            fx = model(x).float()
        d = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * eps * 0.1
        d = ((x + d).clamp(0, 1) - x)
        for _ in range(steps):
            d.requires_grad_(True)
            obj = (model(x + d).float() - fx).abs().sum()
            (grad,) = torch.autograd.grad(obj, d)
            d = (d.detach() + alpha * grad.sign()).clamp(-eps, eps)
            d = (x + d).clamp(0, 1) - x
        with torch.no_grad():
            num = (model(x + d).float() - fx).abs().sum(1)
            den = d.flatten(1).abs().amax(1).clamp_min(1e-12)
        vals.append(num / den)
    v = torch.cat(vals)
    return {"lipschitz_mean": float(v.mean()), "lipschitz_max": float(v.max()), "lipschitz_eps": eps}


@torch.no_grad()
def weight_perturbation(model, batches, rel_sizes: Sequence[float], trials: int = 3, seed: int = 0) -> Dict[str, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    clean = [model(x).float() for x, _ in batches]
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    rows = []
    try:
        for r in rel_sizes:
            change, flips, correct, n = 0.0, 0.0, 0.0, 0
            for _ in range(trials):
                for p, w in zip(params, saved):
                    u = torch.randn(w.shape, generator=gen, device=w.device, dtype=torch.float32)
                    p.copy_(w + (r * w.float().norm() / u.norm().clamp_min(1e-12) * u).to(w.dtype))
                for (x, y), f0 in zip(batches, clean):
                    f1 = model(x).float()
                    change += float(((f1 - f0).norm(dim=1) / f0.norm(dim=1).clamp_min(1e-12)).sum())
                    flips += float((f1.argmax(1) != f0.argmax(1)).sum())
                    correct += float((f1.argmax(1) == y).sum())
                    n += x.shape[0]
            rows.append({"rel_size": float(r), "output_change": change / n, "prediction_flips": flips / n,
                         "acc": correct / n})
    finally:
        for p, w in zip(params, saved):
            p.copy_(w)
    return {"trials": trials, "rows": rows}


def accuracy(model, batches, attack=None, seed: int = 0) -> float:
    correct, n = 0.0, 0
    g = torch.Generator(device=batches[0][0].device).manual_seed(seed)
    for x, y in batches:
        xa = attack(model, x, y, generator=g) if attack is not None else x
        with torch.no_grad():
            correct += float((model(xa).argmax(1) == y).sum())
        n += x.shape[0]
    return correct / n


def integration_settings(info: Dict[str, Any], shared_depth: bool = True) -> List[Dict[str, Any]]:
    """Settings around the trained one: steps x {1/4, 1/2, 1, 2, 4} (>= 1); the step size x
    {0.5, 0.75, 1, 1.5, 2} when the depth is fixed by the weights; tolerances for adaptive solvers."""
    if info["solver"] in ("dopri5", "bosh3", "adaptive_heun", "dopri8"):
        return [{"rtol": t, "atol": t} for t in (1e-1, 1e-2, 1e-3, 1e-4)]
    if "step_size" in info and not shared_depth:
        return [{"step_size": info["step_size"] * m} for m in (0.5, 0.75, 1.0, 1.5, 2.0)]
    s = int(info["steps"])
    return [{"steps": k} for k in sorted({max(1, s // 4), max(1, s // 2), s, 2 * s, 4 * s})]


def integration_sweep(model, batches, eps: float, pgd_steps: int, eot: int = 1, seed: int = 0) -> Dict[str, Any]:
    trained = dict(model.integration())
    shared = bool(getattr(model, "shared", True))
    attack = create_attack("pgd", eps=eps, steps=pgd_steps, eot=eot) if eps > 0 else None
    rows = []
    try:
        for setting in integration_settings(trained, shared):
            model.set_integration(**setting)
            nfe0 = model.nfe() if hasattr(model, "nfe") else None
            clean = accuracy(model, batches)
            # ODE-function evaluations per (batched) clean forward
            nfe = (model.nfe() - nfe0) / len(batches) if nfe0 is not None else None
            row = {**setting, "clean_acc": clean, "nfe": nfe}
            if attack is not None:
                row["robust_acc"] = accuracy(model, batches, attack, seed)
            rows.append(row)
    finally:
        model.set_integration(**{k: v for k, v in trained.items() if k in ("steps", "step_size", "rtol", "atol")})
    return {"trained": trained, "eps": eps, "pgd_steps": pgd_steps, "eot": eot, "rows": rows}


def analyze_model(model, loader, *, eps: float, max_samples: Optional[int] = 256, lipschitz_steps: int = 10,
                  weight_rel: Sequence[float] = (0.01, 0.05, 0.1), trials: int = 3, pgd_steps: int = 10,
                  eot: int = 1, seed: int = 0, device="cpu") -> Dict[str, Any]:
    model = model.to(device).eval()
    batches = _batches(loader, max_samples, device)
    if not batches:
        raise ValueError("analyze: the test split is empty")
    out: Dict[str, Any] = {"n": sum(x.shape[0] for x, _ in batches), "clean_acc": accuracy(model, batches)}
    out.update(input_gradients(model, batches))
    out.update(local_lipschitz(model, batches, eps, lipschitz_steps, seed))
    out["weight_perturbation"] = weight_perturbation(model, batches, weight_rel, trials, seed)
    if hasattr(model, "integration") and hasattr(model, "set_integration"):
        out["integration"] = integration_sweep(model, batches, eps, pgd_steps, eot, seed)
    return out
