"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML), L-inf and L2.

Algorithm 1 of the paper, per sample:

* start at a random point of the ball; initial step eta = 2 eps (L-inf) or eps (L2);
* z = P(x_k + eta * dir(grad)); x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))
  with momentum a = 0.75 (a = 1 on the first step);
* checkpoints w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06):
  at a checkpoint the step is halved and the iterate reset to the best point so far if
  (1) the objective increased in at most rho = 0.75 of the steps since the last checkpoint, or
  (2) the step was not reduced at the last checkpoint and the best objective did not improve since.
* the result is, per sample, the first point that fools the model, else the point of highest objective.

``APGD`` takes loss ``ce``, ``dlr`` or ``cw`` (untargeted), or with ``targeted=True`` a CE/CW
objective toward the given labels. ``APGDT`` is APGD with the targeted DLR loss run
against the top ``n_target_classes`` other classes in turn (as in AutoAttack's APGD-T).
"""
from __future__ import annotations

import math

import torch

from .gradient import subset_rng
from .base import Attack, dlr_targeted_loss, normalize_grad, project
from ..errors import ConfigError
from ..rng import rand as _rand, randn as _randn


def _start(x, eps, norm, generator):
    """AutoAttack's random start: a random direction scaled to the ball's surface, clipped to [0, 1]."""
    if norm == "linf":
        t = 2 * _rand(x.shape, generator, device=x.device) - 1
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    else:
        t = _randn(x.shape, generator, device=x.device)
        t = t / (t.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1))) + 1e-12)
    return (x + eps * t).clamp(0.0, 1.0)


class APGD(Attack):
    name = "apgd"

    def __init__(self, *, eps, steps=100, norm="linf", restarts=1, loss="ce", model_mode="eval",
                 targeted=False, rho=0.75, random_start=True):
        super().__init__(eps=eps, norm=norm, loss=loss, model_mode=model_mode, targeted=targeted)
        if int(steps) < 1 or int(restarts) < 1:
            raise ConfigError(f"attack '{self.name}': steps and restarts must be >= 1")
        self.steps, self.restarts, self.rho, self.random_start = int(steps), int(restarts), float(rho), random_start
        # checkpoint spacing, as in the reference implementation of the paper
        self.k0 = max(int(math.ceil(0.22 * self.steps)), 1)
        self.k_min = max(int(math.ceil(0.06 * self.steps)), 1)
        self.k_decr = max(int(math.ceil(0.03 * self.steps)), 1)

    # one run of Algorithm 1 for objective ``obj(logits) -> per-sample loss`` ------------
    def _lg(self, model, x_adv, obj):
        return self.eot_grad(model, x_adv, obj)   # EOT-averaged when eot_samples > 1

    def run_single(self, model, x, obj, success, generator):
        n, shape = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
        x_adv = _start(x, self.eps, self.norm, generator) if self.random_start else x.clone()
        loss, grad, logits = self._lg(model, x_adv, obj)
        fooled = success(logits)
        x_fool = x_adv.clone()
        x_best, g_best, l_best = x_adv.clone(), grad.clone(), loss.clone()
        step = torch.full((n,), (2.0 if self.norm == "linf" else 1.0) * self.eps, device=x.device)
        x_old = x_adv.clone()
        hist = [loss]
        k, since = self.k0, 0
        l_best_last = l_best.clone()
        reduced_last = torch.ones(n, dtype=torch.bool, device=x.device)
        for i in range(self.steps):
            with torch.no_grad():
                a = 0.75 if i > 0 else 1.0
                z = project(x_adv + step.view(shape) * normalize_grad(grad, self.norm), x, self.eps, self.norm)
                x_new = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_old), x, self.eps, self.norm)
                x_old, x_adv = x_adv, x_new
            loss, grad, logits = self._lg(model, x_adv, obj)
            s = success(logits)
            new = s & ~fooled
            x_fool[new] = x_adv[new]
            fooled |= s
            hist.append(loss)
            up = loss > l_best
            x_best[up], g_best[up], l_best[up] = x_adv[up], grad[up], loss[up]
            since += 1
            if since == k:
                increases = sum((hist[-1 - c] > hist[-2 - c]).float() for c in range(k))
                reduce = (increases <= k * self.rho) | (~reduced_last & (l_best_last >= l_best))
                reduced_last, l_best_last = reduce, l_best.clone()
                if reduce.any():
                    step[reduce] /= 2.0
                    x_adv[reduce], grad[reduce] = x_best[reduce], g_best[reduce]
                    x_old[reduce] = x_best[reduce]
                k, since = max(k - self.k_decr, self.k_min), 0
        out = torch.where(fooled.view(shape), x_fool, x_best)
        return out, fooled, l_best

    def _objective_fn(self, y):
        return lambda logits: self.objective(logits, y)

    def _run(self, model, x, y, generator):
        out = x.clone()
        with torch.no_grad():
            done = self.fooled(self.forward(model, x), y)
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for r in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xi, yi = x[idx], y[idx]
            adv, fooled, lb = self.run_single(model, xi, self._objective_fn(yi),
                                              lambda lg, yi=yi: self.fooled(lg, yi),
                                              subset_rng(generator, idx, "restart", r))
            take = fooled | (lb > best_loss[idx])
            out[idx[take]] = adv[take]
            best_loss[idx[take]] = torch.maximum(best_loss[idx[take]], lb[take])
            done[idx[fooled]] = True
        return out


class APGDCE(APGD):
    name = "apgd_ce"

    def __init__(self, *, eps, loss="ce", **kw):
        super().__init__(eps=eps, loss="ce", **kw)


class APGDDLR(APGD):
    name = "apgd_dlr"
    has_targeted = False

    def __init__(self, *, eps, loss="dlr", **kw):
        super().__init__(eps=eps, loss="dlr", **kw)


class APGDT(APGD):
    """APGD with the targeted DLR loss (Croce & Hein 2020, eq. 7) against each of the
    ``n_target_classes`` most likely other classes (at the clean input) in turn;
    success = misclassification. ``restarts`` runs per target class."""

    name = "apgd_t"
    has_targeted = False

    def __init__(self, *, eps, n_target_classes=9, loss="dlr", **kw):
        super().__init__(eps=eps, loss="dlr", **kw)
        self.n_target_classes = int(n_target_classes)

    def _run(self, model, x, y, generator):
        out = x.clone()
        with torch.no_grad():
            clean_logits = self.forward(model, x)
        done = clean_logits.argmax(1) != y
        order = clean_logits.argsort(1, descending=True)
        n_t = min(self.n_target_classes, clean_logits.shape[1] - 1)
        best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
        for t in range(1, n_t + 1):
            for r in range(self.restarts):
                idx = (~done).nonzero().squeeze(1)
                if idx.numel() == 0:
                    return out
                xi, yi = x[idx], y[idx]
                # the t-th most likely class at the clean input (never y, once y is the top class)
                ti = order[idx, t]
                obj = lambda lg, yi=yi, ti=ti: dlr_targeted_loss(lg, yi, ti)  # noqa: E731
                adv, fooled, lb = self.run_single(model, xi, obj, lambda lg, yi=yi: lg.argmax(1) != yi,
                                                  subset_rng(generator, idx, "target", t, r))
                take = fooled | (lb > best_loss[idx])
                out[idx[take]] = adv[take]
                best_loss[idx[take]] = torch.maximum(best_loss[idx[take]], lb[take])
                done[idx[fooled]] = True
        return out


def apgd(model, x, y, eps, *, steps=100, norm="linf", loss="ce", restarts=1, model_mode="eval",
         targeted=False, generator=None):
    atk = APGD(eps=eps, steps=steps, norm=norm, loss=loss, restarts=restarts, model_mode=model_mode,
               targeted=targeted)
    return atk(model, x, y, generator)
