"""Constrained underdamped Langevin (BAOAB): the circle and the orthogonality constraint.

Leimkuhler, Vlaar, Pouchon & Storkey, "Better training using weight-constrained stochastic
dynamics", ICML 2021 (cBAOAB / oBAOAB), built on the BAOAB splitting of `langevin.py`; the
constrained A-step follows SHAKE (Ryckaert, Ciccotti & Berendsen, J. Comput. Phys. 1977) and the
momentum projection RATTLE (Andersen, J. Comput. Phys. 1983). Exact equations: docs/methods.md.

Circle: each constrained weight w has an auxiliary xi with w^2 + xi^2 = r^2 (so |w| <= r); the
pair moves on its circle, w = r sin(theta), xi = r cos(theta), with tangential velocity v (the
momentum projected to the tangent). Per element, elementwise on any ZeRO partition:
    B: v <- v - kick * g * xi / r           (dU/d(arc length) = g cos(theta))
    A: rotate (w, xi) by the angle (h/2) v / r (the exact constrained drift, a geodesic)
    O: v <- c v + sqrt((1 - c^2) T) z
    A: rotate again; renormalise (w, xi) to radius r against rounding drift
Orthogonality: each constrained matrix (conv kernels reshaped to out x in*k*k) is kept on the
Stiefel manifold, as Q with Q^T Q = I, Q = W (tall) or W^T (wide, W W^T = I):
    B: P <- P - kick * G; P <- P - Q sym(Q^T P)                              (RATTLE)
    A: Q' = Q + (h/2) P + Q L, L symmetric from SHAKE iterations L <- L - (Q'^T Q' - I)/2 until
       max|Q'^T Q' - I| < tol; P <- (Q' - Q)/(h/2); P <- P - Q' sym(Q'^T P)
    O: P <- c P + sqrt((1 - c^2) T) R; P <- P - Q sym(Q^T P)
    A: as above
The orthogonality update needs whole matrices: under ZeRO 1-2 every rank all-reduces the
(weight, gradient, momentum) pieces it owns into full matrices, all ranks compute the same update
and keep their own pieces. ZeRO 3 is refused at load (config/validate.py).
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.distributed as tdist

from ..engine.optim import register_optimizer
from .base import ConstraintRule, LangevinBase, Piece, world_size
from .langevin import STREAM_O, schedule_from
from .schedule import TemperatureSchedule

STREAM_CIRCLE = STREAM_O


class _ConstrainedBAOAB(LangevinBase):
    constrained = True

    def __init__(self, params, lr, temperature, friction, weight_decay, seed, schedule, rule: ConstraintRule):
        schedule = schedule or TemperatureSchedule("constant", temperature)
        super().__init__(params, dict(lr=lr, friction=friction, weight_decay=weight_decay), seed, schedule)
        self.rule = rule

    def _prepare(self, p, h):
        st = self.state[p]
        if "momentum" not in st:
            st["momentum"] = torch.zeros_like(p)
        kick = 0.5 * h + (0.5 * st["h_prev"] if "h_prev" in st else 0.0)
        return st, kick

    @staticmethod
    def _baoab_piece(w, g, v, z, kick, h, c, T):
        """Unconstrained BAOAB on one piece (biases, excluded layers)."""
        v.add_(g, alpha=-kick)
        w.add_(v, alpha=0.5 * h)
        v.mul_(c)
        if z is not None:
            v.add_(z, alpha=math.sqrt((1 - c * c) * T))
        w.add_(v, alpha=0.5 * h)


class CircleBAOAB(_ConstrainedBAOAB):
    registry_name = "circle"

    def __init__(self, params, lr, temperature=0.0, friction=1.0, radius=1.0, radius_first=None,
                 weight_decay=0.0, seed=0, schedule=None, rule: ConstraintRule = None):
        super().__init__(params, lr, temperature, friction, weight_decay, seed, schedule,
                         rule or ConstraintRule(constrain_output=True))
        self.radius, self.radius_first = float(radius), float(radius_first if radius_first is not None else radius)

    def radius_of(self, name: str):
        if not self.rule.constrained(self, name):
            return None
        return self.radius_first if self.rule.is_first(self, name) else self.radius

    @staticmethod
    def _rotate(w, xi, phi):
        cs, sn = torch.cos(phi), torch.sin(phi)
        w_new = w * cs + xi * sn
        xi.mul_(cs).sub_(w * sn)
        w.copy_(w_new)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            h, gamma, wd = group["lr"], group["friction"], group["weight_decay"]
            c = math.exp(-gamma * h)
            for p in group["params"]:
                if p.grad is None:
                    continue
                st, kick = self._prepare(p, h)
                k = self.step_count(p)
                T = self.temperature(k)
                if "xi" not in st:
                    st["xi"] = torch.zeros_like(p)
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                pf, gf, vf, xf = p.view(-1), g.reshape(-1), st["momentum"].view(-1), st["xi"].view(-1)
                for pc in self.pieces(p):
                    sl = slice(pc.offset, pc.offset + pc.numel)
                    z = self.piece_noise(pc, k, STREAM_CIRCLE, p.device).to(p.dtype) if T > 0 else None
                    r = self.radius_of(pc.name)
                    w, gg, v = pf[sl], gf[sl], vf[sl]
                    if r is None:
                        self._baoab_piece(w, gg, v, z, kick, h, c, T)
                        continue
                    xi = xf[sl]
                    if k == 0:   # start on the circle: clip |w| to r, xi = +sqrt(r^2 - w^2)
                        w.clamp_(-r, r)
                        xi.copy_(torch.sqrt((r * r - w * w).clamp_min(0)))
                    v.sub_(kick * gg * xi / r)                       # B, tangential component
                    self._rotate(w, xi, (0.5 * h / r) * v)           # A (exact geodesic drift)
                    v.mul_(c)                                        # O
                    if z is not None:
                        v.add_(z, alpha=math.sqrt((1 - c * c) * T))
                    self._rotate(w, xi, (0.5 * h / r) * v)           # A
                    scale = r / torch.sqrt(w * w + xi * xi)
                    w.mul_(scale)
                    xi.mul_(scale)
                    viol = torch.maximum((w * w + xi * xi - r * r).abs() / (r * r), (w.abs() - r).clamp_min(0))
                    self.note_violation(float(viol.max()) if viol.numel() else 0.0)
                st["h_prev"], st["step"] = h, k + 1
                self.last_temperature = T
        return loss


def _sym(a):
    return 0.5 * (a + a.transpose(-1, -2))


def _tangent(q, v):
    """RATTLE: project v to the tangent space of the Stiefel manifold at q (q^T v skew)."""
    return v - q @ _sym(q.transpose(-1, -2) @ v)


def polar(a):
    """The nearest matrix with orthonormal columns (U V^T of the SVD)."""
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ vh


class OrthogonalBAOAB(_ConstrainedBAOAB):
    registry_name = "orthogonal"

    def __init__(self, params, lr, temperature=0.0, friction=1.0, tolerance=1e-8, max_iterations=100,
                 weight_decay=0.0, seed=0, schedule=None, rule: ConstraintRule = None):
        super().__init__(params, lr, temperature, friction, weight_decay, seed, schedule, rule or ConstraintRule())
        self.tol, self.max_iter = float(tolerance), int(max_iterations)
        self.shake_iterations, self.shake_fallbacks, self._shake_calls = 0, 0, 0

    def _shake(self, q0, p, delta):
        """Constrained drift q0 -> q' over time delta; returns (q', corrected momentum)."""
        eye = torch.eye(q0.shape[1], dtype=q0.dtype, device=q0.device)
        qt = q0 + delta * p
        q, lam = qt, torch.zeros_like(eye)
        for it in range(self.max_iter + 1):
            res = q.transpose(0, 1) @ q - eye
            if float(res.abs().max()) < self.tol:
                break
            if it == self.max_iter or not torch.isfinite(res).all():
                q = polar(qt)          # SHAKE did not converge: retract (counted, logged)
                self.shake_fallbacks += 1
                break
            lam = lam - 0.5 * res
            q = qt + q0 @ lam
        self.shake_iterations += it
        self._shake_calls += 1
        return q, _tangent(q, (q - q0) / delta)

    def _full(self, names: List[str], tensors) -> Dict[str, torch.Tensor]:
        """Whole (weight, grad, momentum) of each constrained parameter, fp64, on every rank."""
        spans, total = {}, 0
        for n in names:
            spans[n] = (total, math.prod(self.param_shapes[n]))
            total += spans[n][1]
        dev = next(iter(tensors))[0].device if tensors else torch.device("cpu")
        buf = torch.zeros(3, total, dtype=torch.float64, device=dev)
        for p, g, v, _ in tensors:
            for pc in self.pieces(p):
                if pc.name in spans:
                    a = spans[pc.name][0] + pc.param_offset
                    sl = slice(pc.offset, pc.offset + pc.numel)
                    for i, t in enumerate((p, g, v)):
                        buf[i, a:a + pc.numel] = t.reshape(-1)[sl]
        if not self.replicated and world_size() > 1:
            tdist.all_reduce(buf)
        return {n: buf[:, a:a + m] for n, (a, m) in spans.items()}

    @staticmethod
    def _as_q(flat, shape):
        m = flat.reshape(shape[0], -1)
        return (m, False) if m.shape[0] > m.shape[1] else (m.transpose(0, 1), True)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        names = [n for n in self.param_order if self.rule.constrained(self, n)]
        live, k, T = [], 0, 0.0
        # constrained matrices use the first group's step size and friction (the engine sets one lr
        # on every group; groups differ only in weight decay, applied to the gradient below)
        h0, gamma0 = self.param_groups[0]["lr"], self.param_groups[0]["friction"]
        kick = 0.5 * h0
        for group in self.param_groups:
            h, gamma, wd = group["lr"], group["friction"], group["weight_decay"]
            c = math.exp(-gamma * h)
            for p in group["params"]:
                if p.grad is None:
                    continue
                st, kick_p = self._prepare(p, h)
                k = self.step_count(p)
                T = self.temperature(k)
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
                live.append((p, g, st["momentum"], h))
                if p is self.param_groups[0]["params"][0]:
                    kick = kick_p
                pf, gf, vf = p.view(-1), g.reshape(-1), st["momentum"].view(-1)
                for pc in self.pieces(p):   # unconstrained pieces: plain BAOAB, locally
                    if pc.name in names:
                        continue
                    sl = slice(pc.offset, pc.offset + pc.numel)
                    z = self.piece_noise(pc, k, STREAM_O, p.device).to(p.dtype) if T > 0 else None
                    self._baoab_piece(pf[sl], gf[sl], vf[sl], z, kick_p, h, c, T)
        h, c = h0, math.exp(-gamma0 * h0)
        full = self._full(names, live)
        new = {}
        for n, (w, g, v) in ((n, full[n]) for n in names):
            shape = self.param_shapes[n]
            q, tr = self._as_q(w, shape)
            gq, _ = self._as_q(g, shape)
            pq, _ = self._as_q(v, shape)
            if k == 0:  # start on the manifold, at rest
                q, pq = polar(q), torch.zeros_like(pq)
            pq = _tangent(q, pq - kick * gq)                             # B + RATTLE
            q, pq = self._shake(q, pq, 0.5 * h)                          # A (SHAKE) + RATTLE
            pq = c * pq
            if T > 0:                                                    # O + RATTLE
                zq, _ = self._as_q(self.piece_noise(_whole(n, shape), k, STREAM_O, w.device).double(), shape)
                pq = pq + math.sqrt((1 - c * c) * T) * zq
            pq = _tangent(q, pq)
            q, pq = self._shake(q, pq, 0.5 * h)                          # A (SHAKE) + RATTLE
            eye = torch.eye(q.shape[1], dtype=q.dtype, device=q.device)
            q32 = q.float().double()
            self.note_violation(float((q32.transpose(0, 1) @ q32 - eye).abs().max()))
            back = (lambda t: t.transpose(0, 1) if tr else t)
            new[n] = (back(q).reshape(-1), back(pq).reshape(-1))
        for p, _, v, _ in live:     # keep this rank's pieces
            for pc in self.pieces(p):
                if pc.name in new:
                    sl, src = slice(pc.offset, pc.offset + pc.numel), slice(pc.param_offset, pc.param_offset + pc.numel)
                    p.view(-1)[sl] = new[pc.name][0][src].to(p.dtype)
                    v.view(-1)[sl] = new[pc.name][1][src].to(v.dtype)
        for p, _, _, hp in live:
            self.state[p]["h_prev"], self.state[p]["step"] = hp, k + 1
        self.last_temperature = T
        return loss

    def log_metrics(self):
        out = super().log_metrics()
        out["shake_iterations"] = self.shake_iterations / max(self._shake_calls, 1)
        out["shake_fallbacks"] = float(self.shake_fallbacks)
        return out


def _whole(name, shape):
    return Piece(name, tuple(shape), 0, 0, math.prod(shape))


def _rule(lc) -> ConstraintRule:
    return ConstraintRule(list(lc.exclude), lc.constrain_biases, lc.constrain_output)


@register_optimizer("circle")
def build_circle(params, cfg):
    lc = cfg.langevin
    return CircleBAOAB(params, lr=cfg.lr, friction=lc.friction, radius=lc.radius, radius_first=lc.radius_first,
                       weight_decay=cfg.weight_decay, seed=int(lc.noise_seed), schedule=schedule_from(lc),
                       rule=_rule(lc))


@register_optimizer("orthogonal")
def build_orthogonal(params, cfg):
    lc = cfg.langevin
    return OrthogonalBAOAB(params, lr=cfg.lr, friction=lc.friction, tolerance=lc.tolerance,
                           max_iterations=lc.max_iterations, weight_decay=cfg.weight_decay,
                           seed=int(lc.noise_seed), schedule=schedule_from(lc), rule=_rule(lc))
