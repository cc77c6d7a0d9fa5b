"""Loss methods and loss add-ons: Huber loss, confidence penalty, variational information bottleneck.

* `huber` (Event.LOSS): standard training with the Huber loss on the softmax output
  (`regularisers.huber_loss`; options `method.huber_delta` and `method.label_smoothing`).
* `confidence_penalty` (Event.AFTER_LOSS add-on): loss - beta * H(softmax(logits)) on the logits
  the main method trains on (Pereyra et al. 2017).
* `pni` (Event.BEFORE_FORWARD + AFTER_LOSS add-on, with `model.pni` set): keys the weight noise of
  the model's PNI layers to the optimizer step (rank-independent noise, models/pni.py) and logs
  the mean noise scale alpha (`pni_alpha`).
* `vib` (Event.AFTER_LOSS add-on): loss + beta * KL(q(z|x) || N(0, I)) of the model's VIB head
  (`model.vib_dim` > 0; Alemi et al. 2017, models/vib.py).

Formulas and references: regularisers.py, models/vib.py, docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import register_method
from .augment import _check, parse_options
from .base import Event, Method, MethodOutput
from .regularisers import confidence_penalty, entropy, huber_loss
from ..errors import ConfigError
from ..models.pni import key_pni, pni_layers
from ..models.vib import vib_heads, vib_kl


class _WithOptions(Method):
    Options = None
    options_key = "method.extra"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.opt = parse_options(self.Options, cfg, self.options_key)

    @classmethod
    def check_config(cls, cfg, key):
        cls.check_options(parse_options(cls.Options, cfg, key), f"{key}.kwargs")

    @classmethod
    def check_options(cls, opt, key):  # pragma: no cover - overridden
        pass


HUBER_DELTA = 1.0                  # default threshold: with delta >= 1 the loss is half the Brier score


def huber_delta(cfg) -> float:
    d = cfg.get("huber_delta", None)
    return HUBER_DELTA if d is None else float(d)


@register_method("huber")
class Huber(Method):
    """Clean-input training with sum_c Huber_delta(softmax(f(x))_c - t_c), t the (smoothed) target.
    Options are typed keys of `method`: `huber_delta`, `label_smoothing`."""

    name = "huber"
    events = (Event.LOSS,)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.delta = huber_delta(cfg)
        self.label_smoothing = float(cfg.get("label_smoothing", 0.0) or 0.0)

    @classmethod
    def check_config(cls, cfg, key):
        kw = dict(cfg.get("kwargs", None) or {})
        if "delta" in kw:
            raise ConfigError(f"key '{key}.kwargs.delta': the Huber threshold is the typed key '{key}.huber_delta'")
        if kw:
            raise ConfigError(f"key '{key}.kwargs': huber takes no kwargs ({', '.join(kw)}); its options are "
                              f"'{key}.huber_delta' and '{key}.label_smoothing'")
        d = huber_delta(cfg)
        _check(d > 0 and math.isfinite(d), f"{key}.huber_delta", "the Huber threshold must be > 0", d)
        ls = float(cfg.get("label_smoothing", 0.0) or 0.0)
        _check(0.0 <= ls < 1.0, f"{key}.label_smoothing", "must be in [0, 1)", ls)

    def loss(self, model, x, y, ctx):
        logits = model(x)
        return MethodOutput(huber_loss(logits, y, self.delta, self.label_smoothing), logits, {})


@dataclass
class PenaltyOptions:
    beta: float = 0.1              # weight of the entropy bonus, in [0, 10] (Pereyra et al. tune it in [0.1, 4])


@register_method("confidence_penalty")
class ConfidencePenalty(_WithOptions):
    name = "confidence_penalty"
    events = (Event.AFTER_LOSS,)
    Options = PenaltyOptions

    @classmethod
    def check_options(cls, opt, key):
        _check(0.0 <= opt.beta <= 10.0, f"{key}.beta", "the penalty weight must be in [0, 10]", opt.beta)

    def after_loss(self, out, x, y, ctx):
        info = dict(out.info, entropy=float(entropy(out.logits.detach()).mean()))
        return MethodOutput(out.loss + confidence_penalty(out.logits, self.opt.beta), out.logits, info)


@dataclass
class VIBOptions:
    beta: float = 1.0e-3           # weight of the KL term, in [0, 1] (Alemi et al.: 1e-3 on MNIST)


@register_method("vib")
class VIB(_WithOptions):
    name = "vib"
    events = (Event.AFTER_LOSS,)
    Options = VIBOptions

    @classmethod
    def check_options(cls, opt, key):
        _check(0.0 <= opt.beta <= 1.0, f"{key}.beta", "the KL weight must be in [0, 1]", opt.beta)

    def after_loss(self, out, x, y, ctx):
        if not vib_heads(ctx.attack_model):
            raise ConfigError("key 'model.vib_dim': method 'vib' needs a VIB head; set model.vib_dim > 0")
        kl = vib_kl(ctx.attack_model)
        info = dict(out.info, vib_kl=float(kl.detach()))
        return MethodOutput(out.loss + self.opt.beta * kl, out.logits, info)


@dataclass
class PNIOptions:
    pass


@register_method("pni")
class PNI(_WithOptions):
    """Parametric Noise Injection's training-side bookkeeping (the layers are `model.pni`)."""

    name = "pni"
    events = (Event.BEFORE_FORWARD, Event.AFTER_LOSS)
    Options = PNIOptions

    def before_forward(self, x, y, ctx):
        if key_pni(ctx.attack_model, ctx.step) == 0:
            raise ConfigError("key 'model.pni': method 'pni' needs PNI layers; set model.pni=layer or channel")
        return x, y

    def after_loss(self, out, x, y, ctx):
        # (under ZeRO-3 the parameters are partitioned outside the forward: nothing to log there)
        alphas = [float(m.pni_alpha.detach().float().mean()) for m in pni_layers(ctx.attack_model)
                  if m.pni_alpha.numel() > 0]
        if not alphas:
            return out
        return MethodOutput(out.loss, out.logits, dict(out.info, pni_alpha=sum(alphas) / len(alphas)))


def check_model_addons(cfg) -> None:
    """Load-time cross-check: the `pni` / `vib` add-ons need the model option they act on."""
    sections = [("method", cfg.method)] + [(f"stages.{i}.method", st.method) for i, st in enumerate(cfg.stages)
                                           if st.method is not None]
    for key, m in sections:
        for i, e in enumerate(m.get("extra", None) or []):
            if e.name == "pni" and cfg.model.pni == "off":
                raise ConfigError(f"key '{key}.extra.{i}.name': 'pni' acts on PNI layers; set model.pni=layer "
                                  "or model.pni=channel")
            if e.name == "vib" and not cfg.model.vib_dim:
                raise ConfigError(f"key '{key}.extra.{i}.name': 'vib' needs a VIB head; set model.vib_dim > 0")
