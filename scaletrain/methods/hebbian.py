"""`method: hebbian`: a Krotov-Hopfield first layer learned without labels, then a classifier on top.

Phase 1 (the first `hebbian_epochs` epochs of the first stage): the first layer (the first
Conv2d/Linear of the model, or `layer`; its initial weights rescaled to std `init_std`) learns by the local plasticity rule of
`scaletrain.optim.hebbian` on its own inputs; the rest of the network is idle (the loss is a
zero multiple of the logits, so gradient steps do nothing with SGD/Adam; the rule's update is
written into the engine's fp32 master weights). ds is accumulated over the micro-batches of an
optimizer step and summed over ranks before the max-normalisation, so 1 rank and N ranks take
the same step on the same global batch. eps decays linearly per epoch (Krotov & Hopfield 2019).
Phase 2: supervised training (`supervised`: standard or pgd_at, with `method.attack`) of the
whole model on top, the first layer frozen (`freeze: true`: restored after every optimizer
step, so neither gradients nor Langevin noise move it) or fine-tuned (`freeze: false`).
`summarize` (called by run.py on rank 0) saves the filter grid PNG and the fraction of
unconverged filters (p-norm^p off 1 by more than `tol`) for the report and W&B.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from ..errors import ConfigError
from ..optim import hebbian as H
from . import METHODS, register_method
from .augment import parse_options
from .base import Event, Method, MethodOutput

@dataclass
class HebbianOptions:
    """`method.kwargs` of `hebbian` (typed: a wrong type or an unknown option exits 2 naming the key)."""
    hebbian_epochs: int = 3        # epochs of the first stage spent on the unsupervised rule, >= 0
    p: float = 3.0                 # Lebesgue exponent p of the rule (fixed point: unit p-norm filters), >= 1
    k: int = 2                     # rank of the hidden unit pushed away (anti-Hebbian), >= 1
    delta: float = 0.4             # strength Delta of the anti-Hebbian push, >= 0
    eps: float = 0.1               # initial rule learning rate (decays linearly to 0 over the phase), > 0
    freeze: bool = True            # keep the learned layer frozen in the supervised phase (false: fine-tune it)
    supervised: str = "standard"   # standard / pgd_at: the supervised phase's method
    layer: Optional[str] = None    # module name of the learned layer (None = the first Conv2d/Linear)
    tol: float = 0.1               # a filter is unconverged when its p-norm^p is off 1 by more than tol, > 0
    init_std: Optional[float] = 1.0  # std of the layer's initial weights (None = keep the model's init), > 0


DEFAULTS: Dict[str, Any] = dataclasses.asdict(HebbianOptions())


class _Stop(Exception):
    pass


def first_layer(model: nn.Module, name=None):
    """(parameter name of the weight, module) of the first Conv2d/Linear, or of module `name`."""
    for n, m in model.named_modules():
        if (name is None and isinstance(m, (nn.Conv2d, nn.Linear))) or (name is not None and n == name):
            return (f"{n}.weight" if n else "weight"), m
    raise ConfigError(f"key 'method.kwargs.layer': no {'Conv2d/Linear' if name is None else name!r} layer "
                      "in the model")


def layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `layer` sees when the model runs on x (the forward stops at the layer)."""
    box = {}

    def hook(mod, args):
        box["v"] = args[0].detach()
        raise _Stop

    h = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return box["v"]


def _options(cfg, key: str = "method") -> Dict[str, Any]:
    kw = dict(cfg.kwargs) if cfg is not None else {}
    unknown = set(kw) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"key '{key}.kwargs': unknown option(s) for hebbian: {', '.join(sorted(unknown))} "
                          f"(options: {', '.join(DEFAULTS)})")
    o = dataclasses.asdict(parse_options(HebbianOptions, cfg, key)) if cfg is not None else dict(DEFAULTS)
    prefix = key
    for name, ok in (("hebbian_epochs", o["hebbian_epochs"] >= 0), ("p", o["p"] >= 1), ("k", o["k"] >= 1),
                    ("delta", o["delta"] >= 0), ("eps", o["eps"] > 0), ("tol", o["tol"] > 0),
                     ("init_std", o["init_std"] is None or o["init_std"] > 0),
                    ("supervised", o["supervised"] in ("standard", "pgd_at"))):
        if not ok:
            raise ConfigError(f"key '{prefix}.kwargs.{name}': invalid value {o[name]!r} for hebbian")
    return o


@register_method("hebbian")
class HebbianFirstLayer(Method):
    name = "hebbian"
    events = (Event.LOSS, Event.AFTER_STEP)
    Options = HebbianOptions       # method.kwargs (docs/configuration.md)
    state_attrs = ("updates", "frozen_weight")

    def __init__(self, cfg=None):
        super().__init__(cfg)
        o = _options(cfg)
        self.hebbian_epochs, self.p, self.k, self.delta = int(o["hebbian_epochs"]), float(o["p"]), int(o["k"]), \
            float(o["delta"])
        self.eps0, self.freeze, self.layer_name, self.tol = float(o["eps"]), bool(o["freeze"]), o["layer"], \
            float(o["tol"])
        self.init_std = o["init_std"]
        inner_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)) if cfg is not None else None
        if inner_cfg is not None:
            inner_cfg.name, inner_cfg.kwargs = o["supervised"], {}
        self.inner = METHODS.get(o["supervised"])(inner_cfg)
        self.updates = 0
        self.frozen_weight = None
        self._ds = None
        self._last = {}

    @classmethod
    def check_config(cls, cfg, key: str) -> None:
        _options(cfg, key)

    def _hebbian_phase(self, ctx) -> bool:
        return ctx.stage == 0 and ctx.epoch < self.hebbian_epochs

    def loss(self, model, x, y, ctx) -> MethodOutput:
        name, layer = first_layer(ctx.attack_model, self.layer_name)
        if not self._hebbian_phase(ctx):
            if self.freeze and self.frozen_weight is None:   # the layer as phase 1 left it
                self.frozen_weight = layer.weight.detach().float().clone()
            return self.inner.loss(model, x, y, ctx)
        if self.updates == 0 and self._ds is None and self.init_std is not None:
            # Krotov & Hopfield start from N(0, 1) weights: rescale the model's (seeded) init to
            # std init_std, so units start with p-norms far from 1 and must earn their way there
            w0 = layer.weight.detach().float()
            ctx.engine.write_param(name, w0 * (float(self.init_std) / float(w0.std())))
        v = layer_input(ctx.attack_model, layer, x).float()
        w = layer.weight.detach().float()
        if isinstance(layer, nn.Conv2d):
            ds = H.conv_plasticity(w, v, self.p, self.k, self.delta, layer.stride, layer.padding, layer.dilation)
        else:
            ds = H.plasticity(w, v.flatten(1), self.p, self.k, self.delta)
        self._ds = ds if self._ds is None else self._ds + ds
        logits = model(x)
        info = dict(self._last, hebbian_eps=H.linear_eps(self.eps0, ctx.epoch, self.hebbian_epochs))
        return MethodOutput(logits.float().sum() * 0.0, logits, info)

    def after_step(self, ctx) -> None:
        eng = ctx.engine
        name, layer = first_layer(ctx.attack_model, self.layer_name)
        if self._ds is not None and eng.last_was_boundary:
            ds, self._ds = eng.all_reduce_sum_(self._ds), None
            w = layer.weight.detach().float().clone()
            H.apply_update(w, ds, H.linear_eps(self.eps0, ctx.epoch, self.hebbian_epochs))
            eng.write_param(name, w)
            self.updates += 1
            c = H.convergence(w, self.p, self.tol)
            self._last = {"hebbian_unconverged": c["unconverged_fraction"], "hebbian_pnorm_max": c["pnorm_max"]}
        elif self.frozen_weight is not None and not self._hebbian_phase(ctx) and eng.last_was_boundary:
            eng.write_param(name, self.frozen_weight)

    def summarize(self, state_dict: Dict[str, torch.Tensor], out_dir: str, model: nn.Module) -> Dict[str, Any]:
        """Filter grid PNG and convergence of the trained first layer (from the saved weights)."""
        name, _ = first_layer(model, self.layer_name)
        w = state_dict[name]
        out = H.convergence(w, self.p, self.tol)
        out.update(layer=name, p=self.p, updates=self.updates, frozen=self.freeze,
                   filters_png=H.filter_grid(w, os.path.join(out_dir, "hebbian_filters.png")))
        return out
