"""Range checks of attack budgets and evaluation settings, at load time.

Images live in [0, 1] pixel space (models normalise inside), so an L-inf budget above 1
allows any image and is a mistake (e.g. ``eval.eps=[0.5,2.0]``, or a budget written in
0..255 units such as 8 instead of 8/255). An L2 budget above the diameter of the image
cube, sqrt(C * H * W) from ``model.in_channels`` and ``model.image_size``, is likewise
beyond any reachable perturbation. Each error names the key (exit 2 at the CLI).
"""
from __future__ import annotations

import math

from omegaconf import DictConfig

from ..errors import ConfigError


def max_eps(norm: str, cfg: DictConfig) -> float:
    """The largest meaningful budget of ``norm`` for this config's images."""
    if norm == "linf":
        return 1.0
    return math.sqrt(cfg.model.in_channels * cfg.model.image_size ** 2)


def _check_budget(key: str, eps, norm: str, cfg: DictConfig) -> None:
    top = max_eps(norm, cfg)
    if eps is None or not (0 <= eps <= top):
        unit = ("pixels lie in [0, 1]; 8/255 is written 0.0314" if norm == "linf"
                else f"sqrt(C*H*W) = {top:.4g} is the diameter of the image cube")
        raise ConfigError(f"key '{key}': {norm} epsilon must be in [0, {top:.4g}], got {eps} ({unit})")


def _check_attack(prefix: str, attack, cfg: DictConfig) -> None:
    if attack.norm not in ("linf", "l2"):
        return   # the choice check names it
    _check_budget(f"{prefix}.eps", attack.eps, attack.norm, cfg)
    if attack.alpha is not None and not attack.alpha > 0:
        raise ConfigError(f"key '{prefix}.alpha': step size must be > 0 or null, got {attack.alpha}")


def check_ranges(cfg: DictConfig) -> None:
    ev = cfg.eval
    if not list(ev.eps):
        raise ConfigError("key 'eval.eps': the epsilon grid is empty")
    if ev.norm in ("linf", "l2"):
        for i, e in enumerate(ev.eps):
            _check_budget(f"eval.eps.{i}", e, ev.norm, cfg)
    for i, s in enumerate(ev.noise_sigmas):
        if not s >= 0:
            raise ConfigError(f"key 'eval.noise_sigmas.{i}': sigma must be >= 0, got {s}")
    if ev.pgd_alpha is not None and not ev.pgd_alpha > 0:
        raise ConfigError(f"key 'eval.pgd_alpha': must be > 0 or null, got {ev.pgd_alpha}")
    if ev.max_samples is not None and ev.max_samples <= 0:
        raise ConfigError(f"key 'eval.max_samples': must be > 0 or null, got {ev.max_samples}")
    if ev.cpu_threads < 0:
        raise ConfigError(f"key 'eval.cpu_threads': must be >= 0 (0 = every core), got {ev.cpu_threads}")
    if cfg.data.split == "official" and cfg.data.source not in ("idx", "shards"):
        raise ConfigError(f"key 'data.split': 'official' keeps a source's published train/test files; "
                          f"data.source={cfg.data.source} has none (use idx, e.g. MNIST, or split=random)")
    _check_attack("method.attack", cfg.method.attack, cfg)
    from .stages import stage_method  # stage sections are partial: check them merged over the run's
    for i, st in enumerate(cfg.stages):
        if st.method is not None:
            _check_attack(f"stages[{i}].method.attack", stage_method(cfg, i).attack, cfg)
