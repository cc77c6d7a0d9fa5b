"""First-order attacks with a fixed budget: FGSM, FGSM-RS, BIM, PGD (L-inf / L2), MIM.

References
* FGSM: Goodfellow, Shlens & Szegedy 2015, x' = x + eps * sign(grad_x L).
* FGSM-RS: Wong, Rice & Kolter 2020 ("Fast is better than free"): uniform start
  in the ball, one step of alpha = 1.25 eps, projection.
* BIM: Kurakin, Goodfellow & Bengio 2017: iterated FGSM with step alpha and
  clipping to the eps ball after each step, no random start.
* PGD: Madry et al. 2018: random start in the ball, steps of alpha * sign(grad)
  (L-inf) or alpha * grad / ||grad||_2 (L2), projection after each step; with
  restarts the worst case per sample is kept.
* MIM: Dong et al. 2018: momentum g <- mu g + grad / ||grad||_1, step alpha * sign(g).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..rng import rand as _rand
from .base import (Attack, default_alpha, normalize_grad, project, random_start as _random_start,
                   step_sizes)
from ..errors import ConfigError


class _BestTracker:
    """Keeps, per sample, the worst case seen so far: the first point that fools the
    model, else the point of highest objective."""

    def __init__(self, x: torch.Tensor):
        n = x.shape[0]
        self.x = x.clone()
        self.loss = torch.full((n,), float("-inf"), device=x.device)
        self.fooled = torch.zeros(n, dtype=torch.bool, device=x.device)

    def walk(self, rows: torch.Tensor) -> "_WalkRecord":
        return _WalkRecord(self, rows)


class _WalkRecord:
    """The tracker's entries of the samples ``rows`` of one walk, aligned with the walk's batch: each
    step updates them with elementwise selects (no per-step gather and scatter over the whole batch);
    ``drop`` writes back the samples that leave the walk, ``close`` the rest."""

    def __init__(self, best: _BestTracker, rows: torch.Tensor):
        self.best, self.rows = best, rows
        self.x, self.loss, self.fooled = best.x[rows], best.loss[rows], best.fooled[rows]

    def update(self, x_adv, loss, fooled):
        """Record the iterate ``x_adv`` where it fools the model first or raises the objective."""
        take = ~self.fooled & (fooled | (loss > self.loss))
        torch.where(take.view(-1, *([1] * (x_adv.dim() - 1))), x_adv, self.x, out=self.x)
        self.loss = torch.where(take, loss.to(self.loss.dtype), self.loss)
        self.fooled |= fooled

    def drop(self, leave):
        """Write back the samples ``leave`` (a mask) and keep the others."""
        self._write(leave)
        keep = ~leave
        self.rows, self.x, self.loss, self.fooled = self.rows[keep], self.x[keep], self.loss[keep], self.fooled[keep]

    def close(self):
        self._write(None)

    def _write(self, sel):
        x, loss, fooled, rows = (self.x, self.loss, self.fooled, self.rows) if sel is None else \
            (self.x[sel], self.loss[sel], self.fooled[sel], self.rows[sel])
        self.best.x[rows], self.best.loss[rows], self.best.fooled[rows] = x, loss, fooled


def subset_rng(generator, idx, *key):
    """The random stream ``key`` (e.g. ("restart", r)) of samples ``idx`` of a batch: a per-sample
    ``SampleRNG`` (scaletrain.rng) gives each sample its own numbers, whichever other samples are
    in the subset; a plain ``torch.Generator`` (or None) simply draws for the subset's shape."""
    if hasattr(generator, "subset"):
        return generator.fork(*key).subset(torch.as_tensor(idx).cpu())
    return generator


class FGSM(Attack):
    name = "fgsm"

    def __init__(self, *, eps, norm="linf", loss="ce", model_mode="eval", targeted=False):
        super().__init__(eps=eps, norm=norm, loss=loss, model_mode=model_mode, targeted=targeted)

    def _run(self, model, x, y, generator):
        _, g, _ = self.loss_and_grad(model, x, y)
        return project(x + self.eps * normalize_grad(g, self.norm), x, self.eps, self.norm)


class FGSMRS(Attack):
    """``clip_start=False`` (L-inf) takes the gradient at the unclipped start x + delta, which may
    leave [0, 1], as Wong et al.'s MNIST code does (fast_adversarial, train_mnist.py); the result is
    projected onto the ball and [0, 1] either way."""

    name = "fgsm_rs"

    def __init__(self, *, eps, alpha=None, norm="linf", loss="ce", model_mode="eval", targeted=False,
                 clip_start=True):
        super().__init__(eps=eps, norm=norm, loss=loss, model_mode=model_mode, targeted=targeted)
        self.alpha = 1.25 * self.eps if alpha is None else float(alpha)
        self.clip_start = bool(clip_start)

    def _run(self, model, x, y, generator):
        if self.clip_start or self.norm != "linf":
            x0 = _random_start(x, self.eps, self.norm, generator)
        else:   # the same uniform draw as random_start, without its clip to [0, 1]
            x0 = x + (2 * _rand(x.shape, generator, device=x.device) - 1) * self.eps
        _, g, _ = self.loss_and_grad(model, x0, y)
        return project(x0 + self.alpha * normalize_grad(g, self.norm), x, self.eps, self.norm)


class PGD(Attack):
    """Projected gradient descent. ``schedule`` (constant | cosine | step) sets per-step sizes;
    ``track_best=True`` returns, per sample, the worst iterate instead of the last one
    (used by the evaluation suite; costs one extra forward pass per restart)."""

    name = "pgd"

    def __init__(self, *, eps, alpha=None, steps=10, norm="linf", random_start=True, restarts=1, loss="ce",
                 model_mode="eval", targeted=False, schedule="constant", track_best=False):
        super().__init__(eps=eps, norm=norm, loss=loss, model_mode=model_mode, targeted=targeted)
        if int(steps) < 1:
            raise ConfigError(f"attack '{self.name}': steps must be >= 1, got {steps}")
        if int(restarts) < 1:
            raise ConfigError(f"attack '{self.name}': restarts must be >= 1, got {restarts}")
        self.steps, self.restarts = int(steps), int(restarts)
        self.alpha = self._default_alpha() if alpha is None else float(alpha)
        self.random_start, self.schedule, self.track_best = bool(random_start), schedule, bool(track_best)
        self.sizes = step_sizes(self.alpha, self.steps, schedule)

    def _default_alpha(self):
        return default_alpha(self.eps, self.steps)

    def _direction(self, g, state):
        # ``g`` is this step's own gradient (nothing else holds it): the L-inf sign is taken in place
        return g.sign_() if self.norm == "linf" else normalize_grad(g, self.norm)

    def _run(self, model, x, y, generator):
        if not (self.track_best or self.restarts > 1):
            return self._walk(model, x, y, generator)
        # Worst case per sample over restarts (the first point that fools the model, else the point
        # of highest objective). A fooled sample's answer is final, so it leaves the batch at once:
        # later steps and restarts run on the survivors only. With a per-sample SampleRNG (the
        # evaluation suite's) and a model without batch statistics this returns exactly what
        # iterating every sample through every step and restart would (tests/evaluate/test_shortcuts.py).
        # An objective given per call (attack(..., objective=f), e.g. TRADES' KL) may read per-sample
        # clean outputs of the whole batch: then every sample stays in the walk.
        self._drop = getattr(self, "_custom", None) is None
        best = _BestTracker(x)
        for r in range(self.restarts):
            live = (~best.fooled).nonzero().squeeze(1) if self._drop else \
                torch.arange(x.shape[0], device=x.device)
            if live.numel() == 0:
                break
            self._walk(model, x[live], y[live], subset_rng(generator, live, "restart", r), best, live)
        return best.x

    def _walk(self, model, x, y, generator, best=None, rows=None):
        """One random start and ``steps`` steps; with ``best``, every iterate is recorded in it (as
        samples ``rows``) and samples drop out of the walk once fooled."""
        x_adv = _random_start(x, self.eps, self.norm, generator) if self.random_start else x.clone()
        rec = best.walk(rows) if best is not None else None
        if self.norm == "linf":
            # the L-inf ball intersected with [0, 1] is a box: one clamp per step
            lo, hi = (x - self.eps).clamp_(min=0.0), (x + self.eps).clamp_(max=1.0)
        state = {}
        for a in self.sizes:
            loss, g, logits = self.loss_and_grad(model, x_adv, y)
            if rec is not None:
                fooled = self.fooled(logits, y)
                rec.update(x_adv, loss, fooled)
                if self._drop and fooled.any():
                    rec.drop(fooled)
                    keep = ~fooled
                    if not keep.any():
                        return None
                    x_adv, g, x, y = x_adv[keep], g[keep], x[keep], y[keep]
                    state = {k: v[keep] for k, v in state.items()}
                    if self.norm == "linf":
                        lo, hi = lo[keep], hi[keep]
            # one new tensor per step: the L-inf box is applied in place (lo <= hi, so clamp(lo, hi) is
            # the projection onto the ball intersected with [0, 1])
            x_adv = torch.add(x_adv, self._direction(g, state), alpha=a)
            x_adv = x_adv.clamp_(lo, hi) if self.norm == "linf" else project(x_adv, x, self.eps, self.norm)
        if rec is not None:
            with torch.no_grad():
                logits = self.forward(model, x_adv)
                rec.update(x_adv, self.objective(logits, y), self.fooled(logits, y))
            rec.close()
        return x_adv


class BIM(PGD):
    """Kurakin et al. 2017: PGD without random start; default step eps / steps."""

    name = "bim"

    def __init__(self, *, eps, alpha=None, steps=10, norm="linf", random_start=False, **kw):
        super().__init__(eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=False, **kw)

    def _default_alpha(self):
        return self.eps / self.steps


class MIM(PGD):
    """Momentum iterative method (Dong et al. 2018); ``decay`` is mu (default 1.0)."""

    name = "mim"

    def __init__(self, *, eps, alpha=None, steps=10, decay=1.0, random_start=False, **kw):
        super().__init__(eps=eps, alpha=alpha, steps=steps, random_start=random_start, **kw)
        self.decay = float(decay)

    def _default_alpha(self):
        return self.eps / self.steps

    def _direction(self, g, state):
        # g_{t+1} = mu * g_t + grad / ||grad||_1 (the L1 norm per sample, as a mean for scale-free steps)
        g = g / (g.abs().flatten(1).mean(1).view(-1, *([1] * (g.dim() - 1))) + 1e-12)
        m = state.get("m")
        m = g if m is None else self.decay * m + g
        state["m"] = m
        return normalize_grad(m, self.norm)


# ------------------------------------------------------------- functional forms
def fgsm(model, x, y, eps, *, norm="linf", loss="ce", model_mode="eval", targeted=False):
    return FGSM(eps=eps, norm=norm, loss=loss, model_mode=model_mode, targeted=targeted)(model, x, y)


def pgd(model, x, y, eps, *, alpha=None, steps=10, norm="linf", random_start=True, restarts=1, loss="ce",
        model_mode="eval", targeted=False, schedule="constant", track_best=False,
        generator: Optional[torch.Generator] = None):
    atk = PGD(eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=random_start, restarts=restarts,
              loss=loss, model_mode=model_mode, targeted=targeted, schedule=schedule, track_best=track_best)
    return atk(model, x, y, generator)
