"""Batch-transform methods: Gaussian input noise, CutMix, Mixup, Cutout (Event.BEFORE_FORWARD).

Each one is an add-on composed with a loss method through `method.extra`, e.g. TRADES on
CutMix-ed batches::

    method: {name: trades, extra: [{name: cutmix, kwargs: {alpha: 1.0}}]}

and wraps the functional form of `mixing.py` / `noise.py` (formulas and references there and in
docs/methods.md). Random draws come from `ctx.rng` (per global sample index), so a sample gets
the same noise / box / lambda on 1 and N ranks. Mixing returns soft targets (N, C); loss methods
train on them with cross-entropy, attacks use `hard_labels(y)`.

Options (`method.extra[i].kwargs`) are typed dataclasses below, checked at load: an unknown
option, a wrong type or a value out of range exits 2 naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import register_method
from .base import Event, Method
from .mixing import cutmix_batch, cutout_batch, mixup_batch
from .noise import gaussian_noise_batch
from ..errors import ConfigError


def parse_options(schema, cfg, key: str):
    """`cfg.kwargs` merged onto the dataclass `schema` (unknown keys / wrong types -> ConfigError naming
    `<key>.kwargs.<option>`), returned as a plain dataclass instance."""
    kw = OmegaConf.to_container(cfg.kwargs, resolve=True) if OmegaConf.is_config(cfg.kwargs) else dict(cfg.kwargs or {})
    names = [f.name for f in fields(schema)]
    for k in kw:
        if k not in names:
            raise ConfigError(f"key '{key}.kwargs.{k}': unknown option of '{cfg.name}'; options: {', '.join(names)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), kw)
    except OmegaConfBaseException as e:
        bad = getattr(e, "full_key", "") or ""
        raise ConfigError(f"key '{key}.kwargs.{bad}': {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)


def _check(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"key '{key}': {what}, got {value}")


def num_classes(ctx) -> int:
    """Classes of the run's model (for one-hot targets)."""
    n = getattr(ctx, "num_classes", None)
    return int(n if n is not None else ctx.engine.cfg.model.num_classes)


class BatchTransform(Method):
    """Base of the add-ons that transform (x, y) before the forward (each declares Event.BEFORE_FORWARD)."""

    Options = None

    def __init__(self, cfg):
        super().__init__(cfg)
        self.opt = parse_options(self.Options, cfg, "method.extra")

    @classmethod
    def check_config(cls, cfg, key):
        opt = parse_options(cls.Options, cfg, key)
        cls.check_options(opt, f"{key}.kwargs")

    @classmethod
    def check_options(cls, opt, key):  # pragma: no cover - overridden
        pass


@dataclass
class NoiseOptions:
    sigma: float = 0.25            # std of the Gaussian input noise in (0, 1], pixel units (Cohen et al. use 0.12-1.0)
    clip: bool = False             # clip the noisy input to [0, 1] (the paper does not)


@register_method("gaussian_noise")
class GaussianNoise(BatchTransform):
    """x <- x + sigma * N(0, I) (Cohen, Rosenfeld & Kolter 2019; the training side of randomized smoothing)."""

    name = "gaussian_noise"
    events = (Event.BEFORE_FORWARD,)
    Options = NoiseOptions

    @classmethod
    def check_options(cls, opt, key):
        _check(0.0 < opt.sigma <= 1.0, f"{key}.sigma", "the noise std must be in (0, 1] (pixels are in [0, 1])",
               opt.sigma)

    def before_forward(self, x, y, ctx):
        return gaussian_noise_batch(x, self.opt.sigma, ctx.rng.fork("gaussian_noise"), self.opt.clip), y


@dataclass
class MixOptions:
    alpha: float = 1.0             # lambda ~ Beta(alpha, alpha), alpha > 0 (1.0 = uniform, CutMix's default)
    prob: float = 1.0              # probability that a sample is mixed, in [0, 1]


@register_method("cutmix")
class CutMix(BatchTransform):
    """Yun et al. 2019: paste a partner's box; labels mixed in the patch's exact area share."""

    name = "cutmix"
    events = (Event.BEFORE_FORWARD,)
    Options = MixOptions

    @classmethod
    def check_options(cls, opt, key):
        _check(opt.alpha > 0, f"{key}.alpha", "the Beta parameter must be > 0", opt.alpha)
        _check(0.0 <= opt.prob <= 1.0, f"{key}.prob", "a probability must be in [0, 1]", opt.prob)

    def before_forward(self, x, y, ctx):
        return cutmix_batch(x, y, num_classes(ctx), self.opt.alpha, ctx.rng.fork("cutmix"), self.opt.prob)


@dataclass
class MixupOptions:
    alpha: float = 0.2             # lambda ~ Beta(alpha, alpha), alpha > 0 (Zhang et al. use 0.1-0.4 on ImageNet, 1.0 on CIFAR)


@register_method("mixup")
class Mixup(BatchTransform):
    """Zhang et al. 2018: convex combinations of sample pairs and of their labels."""

    name = "mixup"
    events = (Event.BEFORE_FORWARD,)
    Options = MixupOptions

    @classmethod
    def check_options(cls, opt, key):
        _check(opt.alpha > 0, f"{key}.alpha", "the Beta parameter must be > 0", opt.alpha)

    def before_forward(self, x, y, ctx):
        return mixup_batch(x, y, num_classes(ctx), self.opt.alpha, ctx.rng.fork("mixup"))


@dataclass
class CutoutOptions:
    size: int = 4                  # side of the erased square in pixels, >= 1 (DeVries & Taylor: 16 on CIFAR-10's 32)
    prob: float = 1.0              # probability that a sample is erased, in [0, 1]
    fill: float = 0.0              # value written in the square, a pixel value in [0, 1]


@register_method("cutout")
class Cutout(BatchTransform):
    """DeVries & Taylor 2017: erase a size x size square at a uniform centre (labels unchanged)."""

    name = "cutout"
    events = (Event.BEFORE_FORWARD,)
    Options = CutoutOptions

    @classmethod
    def check_options(cls, opt, key):
        _check(opt.size >= 1, f"{key}.size", "the square side must be >= 1 pixel", opt.size)
        _check(0.0 <= opt.prob <= 1.0, f"{key}.prob", "a probability must be in [0, 1]", opt.prob)
        _check(0.0 <= opt.fill <= 1.0, f"{key}.fill", "the fill value must be a pixel value in [0, 1]", opt.fill)

    def before_forward(self, x, y, ctx):
        return cutout_batch(x, self.opt.size, ctx.rng.fork("cutout"), self.opt.fill, self.opt.prob), y
