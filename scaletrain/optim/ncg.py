"""Nonlinear conjugate gradient with a backtracking (Armijo) line search: optimizer `ncg`.

    d_0 = -g_0,   d_k = -g_k + beta_k d_{k-1}
    Polak-Ribiere (PR+):  beta_k = max(0, g_k . (g_k - g_{k-1}) / |g_{k-1}|^2)
    Fletcher-Reeves:      beta_k = |g_k|^2 / |g_{k-1}|^2
    x_{k+1} = x_k + t_k d_k,  t_k the first of t0, t0 rho, t0 rho^2, ... with
    f(x_k + t d_k) <= f(x_k) + c1 t g_k . d_k          (Armijo sufficient decrease)

(Nocedal & Wright, "Numerical Optimization", 2nd ed., Sec. 5.2 and 3.1.) When d_k is not a
descent direction, or every `max_ls` trial fails, the direction restarts from -g; `restart`
> 0 also restarts every that many steps. t0 is the scheduled learning rate (the engine sets
`lr` before each step, so `optim.lr` and the schedule set the first trial step).

The line search evaluates the loss at trial points, so `step(closure)` needs a closure that
returns the loss of the current batch at the current weights (no backward: the gradient of
x_k is already in `.grad`). The engine provides it on the torch backend (`engine.backend=torch`,
the loss averaged over ranks so that every rank accepts the same step); DeepSpeed steps its
wrapped optimizer without a closure, so the config check refuses `ncg` there. The closure reruns
the method's loss on the same batch (the method's per-sample random numbers are keyed by sample
and step, so an adversarial method gives the same attack starts at every trial); BatchNorm
running statistics see the trial forwards too, so prefer GroupNorm models (the ODE models).
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

from ..engine.optim import register_optimizer


class NonlinearCG(torch.optim.Optimizer):
    requires_closure = True

    def __init__(self, params, lr: float = 0.1, beta: str = "pr", c1: float = 1e-4, shrink: float = 0.5,
                 max_ls: int = 10, restart: int = 0, weight_decay: float = 0.0):
        if beta not in ("pr", "fr"):
            raise ValueError(f"beta must be 'pr' (Polak-Ribiere+) or 'fr' (Fletcher-Reeves), got {beta!r}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.beta_rule, self.c1, self.shrink, self.max_ls, self.restart = beta, c1, shrink, int(max_ls), int(restart)
        self.stats = {"line_search_evals": 0, "restarts": 0, "beta": 0.0, "step_size": 0.0}

    def _params(self) -> List[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _flat_grad(self, params) -> torch.Tensor:
        out = []
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad.detach().float().reshape(-1)
                if g["weight_decay"]:
                    d = d + g["weight_decay"] * p.detach().float().reshape(-1)
                out.append(d)
        return torch.cat(out)

    def _add(self, params, vec: torch.Tensor, t: float) -> None:
        i = 0
        for p in params:
            n = p.numel()
            p.data.add_(vec[i:i + n].view_as(p).to(p.dtype), alpha=t)
            i += n

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        if closure is None:
            raise RuntimeError("ncg needs step(closure): the line search evaluates the loss at trial points "
                               "(engine.backend=torch provides it)")
        params = self._params()
        if not params:
            return None
        st = self.state.setdefault("ncg", {"k": 0})
        g = self._flat_grad(params)
        d = -g
        if "g" in st and not (self.restart and st["k"] % self.restart == 0):
            gg_prev = float(st["g"].dot(st["g"]))
            if self.beta_rule == "fr":
                beta = float(g.dot(g)) / max(gg_prev, 1e-30)
            else:
                beta = max(0.0, float(g.dot(g - st["g"])) / max(gg_prev, 1e-30))
            d = -g + beta * st["d"]
            self.stats["beta"] = beta
        slope = float(g.dot(d))
        if slope >= 0:  # not a descent direction: steepest descent
            d, slope = -g, -float(g.dot(g))
            self.stats["restarts"] += 1
        with torch.enable_grad():
            f0 = float(closure().detach())
        # first trial: the scheduled lr, or less where the last step's decrease predicts it
        # (t_prev * slope_prev / slope, Nocedal & Wright Eq. 3.60), saving backtracking evaluations
        t = self.param_groups[0]["lr"]
        if st.get("t", 0.0) > 0 and st.get("slope", 0.0) < 0:
            t = min(t, 2.0 * st["t"] * st["slope"] / slope)
        accepted, moved = False, 0.0
        for _ in range(self.max_ls):
            self._add(params, d, t - moved)
            moved = t
            with torch.enable_grad():
                f = float(closure().detach())
            self.stats["line_search_evals"] += 1
            if f <= f0 + self.c1 * t * slope:
                accepted = True
                break
            t *= self.shrink
        if not accepted:  # no sufficient decrease: stay, and restart the direction next step
            self._add(params, d, -moved)
            st.pop("g", None)
            self.stats["restarts"] += 1
            t = 0.0
        else:
            st["g"], st["d"] = g, d
        st["t"], st["slope"] = t, slope
        st["k"] += 1
        self.stats["step_size"] = t
        return torch.tensor(f0)


@register_optimizer("ncg")
def _ncg(params, cfg):
    """optim.kwargs: beta (pr | fr), c1, shrink, max_ls, restart."""
    return NonlinearCG(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **dict(cfg.kwargs))


_ncg.requires_closure = True
