"""Shared machinery of every attack: the call contract, losses, norms, projection.

Contract (docs/attacks.md): ``attack(model, x, y, generator=None) -> x_adv``

* ``x`` is a float batch in [0, 1] (normalisation lives inside the model);
  ``x_adv`` is detached, inside the epsilon ball around ``x`` and inside [0, 1].
* The model is put in ``eval()`` or ``train()`` mode (``model_mode``) for the
  attack and every submodule's previous mode is restored afterwards; in train mode
  BatchNorm running statistics are restored too (an attack never changes the model).
* Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only, so the
  parameters' ``.grad`` are never touched (safe inside a training step and on
  a DeepSpeed engine's ``module``, including ZeRO-3 whose hooks gather the
  parameters during forward and backward).
* The forward pass may run under ``torch.autocast`` (bf16 on GPU); logits are
  cast to fp32 before the loss and the perturbation is kept and updated in fp32.
* All randomness comes from ``generator`` (a ``torch.Generator`` on the device
  of ``x``, or on CPU, or a ``scaletrain.rng.SampleRNG`` whose numbers are keyed by
  global sample index), so a fixed generator seed gives the same ``x_adv``.
* The objective is open: ``attack(model, x, y, objective=f)`` maximises the per-sample
  ``f(logits, y, clean_logits)`` instead of the configured loss (``clean_logits`` are the
  model's fp32 logits of ``x`` in the attack's mode, no gradient). TRADES' KL and MART use
  this with the same attacks as PGD-AT.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..rng import rand as _rand, randn as _randn

NORMS = ("linf", "l2")
LOSSES = ("ce", "cw", "dlr")
MODES = ("eval", "train")


# --------------------------------------------------------------------- losses
def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i per sample (> 0 iff the prediction is y, ties aside)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return z_y - other.amax(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 6), per sample, to be maximised:
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), pi the logits sorted in decreasing order."""
    zs, _ = logits.sort(dim=1, descending=True)
    return -margin(logits, y) / (zs[:, 0] - zs[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 7), to be maximised:
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    zs, _ = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)


def per_sample_loss(name: str, logits: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """The per-sample objective the attack *maximises*.

    Untargeted: ``ce`` = cross-entropy of the true class; ``cw`` = the CW margin
    max_{i != y} z_i - z_y (Carlini & Wagner 2017); ``dlr`` = DLR.
    Targeted (``y`` is the target class): the negated CE of the target, or
    z_t - max_{i != t} z_i for ``cw``.
    """
    logits = logits.float()
    if name == "ce":
        ce = F.cross_entropy(logits, y, reduction="none")
        return -ce if targeted else ce
    if name == "cw":
        m = margin(logits, y)
        return m if targeted else -m
    if name == "dlr":
        if targeted:
            raise ConfigError("loss 'dlr' has no targeted form with a given target; use attack 'apgd_t'")
        return dlr_loss(logits, y)
    raise ConfigError(f"unknown attack loss '{name}'; available: {', '.join(LOSSES)}")


# ---------------------------------------------------------------- geometry
def _flat_norm(t: torch.Tensor, p) -> torch.Tensor:
    return t.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (t.dim() - 1)))


def normalize_grad(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit norm: sign(g) (L-inf) or g / ||g||_2 (L2)."""
    if norm == "linf":
        return g.sign()
    return g / (_flat_norm(g, 2) + 1e-12)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto {x' : ||x' - x|| <= eps} intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = _flat_norm(delta, 2)
        delta = delta * torch.clamp(eps / (n + 1e-12), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: str, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A random point of the eps ball, clipped to [0, 1]. L-inf: uniform in the cube. L2: a uniform
    direction at a radius drawn uniformly from [0, eps] (denser near the centre than a uniform point
    of the ball, which in high dimension sits on the surface; measured stronger with few steps)."""
    if norm == "linf":
        u = _rand(x.shape, generator, device=x.device)
        delta = (2 * u - 1) * eps
    else:
        g = _randn(x.shape, generator, device=x.device)
        r = _rand((x.shape[0],), generator, device=x.device)
        radius = eps * r
        delta = (g / (_flat_norm(g, 2) + 1e-12) * radius.view(-1, *([1] * (x.dim() - 1)))).to(x.device)
    return (x + delta).clamp(0.0, 1.0)


# ---------------------------------------------------------------- the base class
class ModelMode:
    """Context manager: put ``model`` in eval/train mode, restore every submodule's flag after.

    In train mode the forward passes of an attack would move BatchNorm running statistics
    towards half-built adversarial batches (the GUIDE's BatchNorm trap): their buffers are
    saved on entry and written back on exit, so an attack never changes the model."""

    def __init__(self, model: nn.Module, mode: str):
        self.model, self.mode = model, mode

    def __enter__(self):
        self.saved = [(m, m.training) for m in self.model.modules()]
        self.bn = []
        if self.mode == "train":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                    self.bn.append((m, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)
                                        if b is not None}))
        self.model.train(self.mode == "train")
        return self.model

    def __exit__(self, *exc):
        for m, flag in self.saved:
            m.training = flag
        with torch.no_grad():
            for m, bufs in self.bn:
                for k, v in bufs.items():
                    getattr(m, k).copy_(v)
        return False


class Attack:
    """Base class. Subclasses implement ``_run(model, x, y, generator) -> x_adv``
    (``x`` fp32, the model already in the requested mode)."""

    name = "attack"
    norms = NORMS
    has_targeted = True
    eval_steps = True        # the evaluation suite sets ``steps`` from eval.pgd_steps

    def __init__(self, *, eps: float, norm: str = "linf", loss: str = "ce", model_mode: str = "eval",
                 targeted: bool = False):
        if eps is None or not (eps >= 0):
            raise ConfigError(f"attack '{self.name}': eps must be a number >= 0, got {eps}")
        if norm not in self.norms:
            raise ConfigError(f"attack '{self.name}': norm '{norm}' is not supported; use one of "
                              f"{', '.join(self.norms)}")
        if loss not in LOSSES:
            raise ConfigError(f"attack '{self.name}': unknown loss '{loss}'; use one of {', '.join(LOSSES)}")
        if model_mode not in MODES:
            raise ConfigError(f"attack '{self.name}': model_mode must be eval or train, got '{model_mode}'")
        if targeted and not self.has_targeted:
            raise ConfigError(f"attack '{self.name}' has no targeted mode")
        self.eps, self.norm, self.loss, self.model_mode, self.targeted = float(eps), norm, loss, model_mode, targeted
        self._fwd_dtype = None

    # forward, objective and input gradient ---------------------------------
    def forward(self, model, x):
        """fp32 logits of ``x``; the model is fed ``x`` in its own floating dtype (a bf16 module,
        e.g. a DeepSpeed bf16 engine's, gets bf16 inputs; the cast is differentiable, so the
        perturbation and its gradient stay fp32)."""
        return model(x if self._fwd_dtype in (None, x.dtype) else x.to(self._fwd_dtype)).float()

    _custom = None           # an open objective f(logits, y, clean_logits), set for one call
    _clean = None

    def objective(self, logits, y):
        if self._custom is not None:
            return self._custom(logits, y, self._clean)
        return per_sample_loss(self.loss, logits, y, self.targeted)

    eot_samples = 1          # expectation over transformation: gradients averaged over this many forwards

    def loss_and_grad(self, model, x_adv, y):
        """Per-sample objective, its gradient w.r.t. x_adv (fp32) and the logits (fp32, detached)."""
        return self.eot_grad(model, x_adv, lambda logits: self.objective(logits, y))

    def eot_grad(self, model, x_adv, obj):
        """(objective, input gradient, logits) of ``obj(logits) -> per-sample loss`` at ``x_adv``.

        With ``eot_samples`` = k > 1 (randomised models: PNI, noise layers) all three are the means
        over k forward passes, each with its own randomness: the expectation-over-transformation
        gradient of Athalye, Carlini & Wagner (ICML 2018), grad E_r[L(f_r(x'))] ~ (1/k) sum_i grad L(f_{r_i}(x'))."""
        x_adv = x_adv.detach().requires_grad_(True)
        k = int(self.eot_samples)
        acc = None
        with torch.enable_grad():
            for _ in range(k):
                logits = self.forward(model, x_adv)
                loss = obj(logits)
                (grad,) = torch.autograd.grad(loss.sum(), x_adv)
                out = (loss.detach(), grad.float(), logits.detach())
                acc = out if acc is None else tuple(a + o for a, o in zip(acc, out))
        return acc if k == 1 else tuple(a / k for a in acc)

    def fooled(self, logits, y):
        """Success per sample: misclassified (untargeted) or classified as the target (targeted)."""
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 generator=None, objective: Optional[Callable] = None) -> torch.Tensor:
        if x.numel() == 0 or self.eps == 0:
            return x.detach().clone()
        x32 = x.detach().float()
        self._fwd_dtype = _input_dtype(model, x)
        with ModelMode(model, self.model_mode):
            if objective is not None:
                with torch.no_grad():
                    self._clean = self.forward(model, x32).detach()
                self._custom = objective
            try:
                x_adv = self._run(model, x32, y, generator)
            finally:
                self._custom = self._clean = None
        return x_adv.detach().to(x.dtype)

    def _run(self, model, x, y, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        keys = ("eps", "alpha", "steps", "norm", "loss", "restarts", "model_mode", "targeted")
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys if hasattr(self, k))
        return f"{type(self).__name__}({args})"


def _input_dtype(model: nn.Module, x: torch.Tensor):
    """The dtype the model's forward expects: the caller's if it is a low-precision float, else the
    first floating parameter's (bf16/fp16 modules), else None (feed fp32)."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype if p.dtype in (torch.bfloat16, torch.float16) else None
    return None


def default_alpha(eps: float, steps: int) -> float:
    """Madry et al. 2018's rule of thumb: step 2.5 * eps / steps (so the walk can cross the ball)."""
    return 2.5 * eps / max(steps, 1)


def step_sizes(alpha: float, steps: int, schedule: str):
    """Per-step sizes: ``constant``; ``cosine`` (alpha * (1 + cos(pi t / T)) / 2, from alpha to ~0);
    ``step`` (alpha, then alpha/10 after 50% and alpha/100 after 75% of the steps)."""
    if schedule == "constant":
        return [alpha] * steps
    if schedule == "cosine":
        return [alpha * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
    if schedule == "step":
        return [alpha * (1.0 if t < steps // 2 else 0.1 if t < (3 * steps) // 4 else 0.01) for t in range(steps)]
    raise ConfigError(f"unknown step-size schedule '{schedule}'; use constant, cosine or step")
