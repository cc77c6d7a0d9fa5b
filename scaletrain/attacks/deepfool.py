"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016), multi-class, batched.

At each step, for every sample still classified as its label y, the classifier is
linearised around the current point: for each class k != y, f_k = z_k - z_y and
w_k = grad z_k - grad z_y. The closest linearised boundary is
l = argmin_k |f_k| / ||w_k||_q (q = 2 for L2; q = 1, the dual norm, for L-inf) and
the step is r = (|f_l| + 1e-4) / ||w_l||_2^2 * w_l (L2) or (|f_l| + 1e-4) / ||w_l||_1 * sign(w_l)
(L-inf). Steps accumulate in r_tot; the output is x + (1 + overshoot) r_tot clipped to
[0, 1], and a sample stops once that point is misclassified (or after ``steps``).

DeepFool is a minimum-norm attack: with ``eps=inf`` (the default of the functional
form) the perturbation is unbounded; with a finite ``eps`` it is projected onto the
eps ball, which is how the evaluation suite uses it on an epsilon grid.
"""
from __future__ import annotations

import torch

from .base import Attack, project
from ..errors import ConfigError


class DeepFool(Attack):
    name = "deepfool"
    has_targeted = False
    eval_steps = False       # runs to convergence (default 50 steps), not eval.pgd_steps

    def __init__(self, *, eps=float("inf"), steps=50, overshoot=0.02, norm="l2", model_mode="eval", loss="ce"):
        super().__init__(eps=eps, norm=norm, loss=loss, model_mode=model_mode)
        if int(steps) < 1:
            raise ConfigError(f"attack 'deepfool': steps must be >= 1, got {steps}")
        self.steps, self.overshoot = int(steps), float(overshoot)

    def _jacobian(self, model, x):
        """Logits (C) and the gradient of every logit w.r.t. x (C x N x ...)."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x).float()
            grads = [torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < logits.shape[1] - 1)[0]
                     for k in range(logits.shape[1])]
        return logits.detach(), torch.stack(grads).float()

    def _run(self, model, x, y, generator):
        shape = (-1,) + (1,) * (x.dim() - 1)
        r_tot = torch.zeros_like(x)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            x_cur = (x + (1 + self.overshoot) * r_tot).clamp(0, 1)
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            logits, jac = self._jacobian(model, x_cur[idx])
            yi = y[idx]
            still = logits.argmax(1) == yi
            active[idx[~still]] = False
            if not still.any():
                break
            idx, logits, jac, yi = idx[still], logits[still], jac[:, still], yi[still]
            rows = torch.arange(idx.numel(), device=x.device)
            f = logits - logits[rows, yi][:, None]                           # N x C
            w = jac - jac[yi, rows][None]                                   # C x N x ...
            wf = w.transpose(0, 1).flatten(2)                               # N x C x D
            dual = wf.norm(p=2 if self.norm == "l2" else 1, dim=2)          # N x C
            ratio = f.abs() / (dual + 1e-12)
            ratio[rows, yi] = float("inf")
            l = ratio.argmin(1)
            w_l, f_l, d_l = wf[rows, l], f[rows, l].abs(), dual[rows, l]
            if self.norm == "l2":
                r = (f_l + 1e-4)[:, None] / (d_l[:, None] ** 2 + 1e-12) * w_l
            else:
                r = (f_l + 1e-4)[:, None] / (d_l[:, None] + 1e-12) * w_l.sign()
            r_tot[idx] = r_tot[idx] + r.view_as(x[idx])
        x_adv = (x + (1 + self.overshoot) * r_tot).clamp(0, 1)
        return project(x_adv, x, self.eps, self.norm) if self.eps != float("inf") else x_adv


def deepfool(model, x, y, *, eps=float("inf"), steps=50, overshoot=0.02, norm="l2", model_mode="eval"):
    return DeepFool(eps=eps, steps=steps, overshoot=overshoot, norm=norm, model_mode=model_mode)(model, x, y)
