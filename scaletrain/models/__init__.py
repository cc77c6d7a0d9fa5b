"""Model registry. Every model takes [0, 1] pixels and normalises inside.

`create_model(cfg.model)` builds a registered model from its config section; `check_config`
(called when a config is loaded) and `check_data` (called when a run starts) turn mistakes into
one-line `ConfigError`s naming the key. docs/models.md lists the zoo.
"""
import importlib
import inspect

from ..errors import ConfigError
from ..registry import Registry

MODELS = Registry("model", "model.name")
register_model = MODELS.register

# modules that register built-in models when imported (one line each)
_BUILTIN = (
    "cnn",
    "mnist_small",
    "resnet",
    "ode",
    "resnet_ode",
    "sde",
    "deq",
)
_COMMON = ("num_classes", "in_channels", "image_size", "width", "mean", "std")


def _load_builtin() -> None:
    for mod in _BUILTIN:
        importlib.import_module(f"{__name__}.{mod}")


def model_kwargs(cfg) -> dict:
    """The keyword arguments `create_model` passes: the common keys, then `model.kwargs`.
    `width: null` leaves the model's own (published) default."""
    kw = dict(num_classes=cfg.num_classes, in_channels=cfg.in_channels, image_size=cfg.image_size,
              mean=list(cfg.mean), std=list(cfg.std))
    if cfg.width is not None:
        kw["width"] = cfg.width
    kw.update(dict(cfg.kwargs))
    return kw


def create_model(cfg):
    """Build the model named by a `ModelConfig` (section `model`)."""
    _load_builtin()
    model = MODELS.create(cfg.name, **model_kwargs(cfg))
    # generic model options, applied to any registered model (docs/methods.md)
    if getattr(cfg, "vib_dim", 0):
        from .vib import apply_vib
        apply_vib(model, int(cfg.vib_dim))
    if getattr(cfg, "pni", "off") != "off":
        from .pni import apply_pni
        apply_pni(model, cfg.pni, float(cfg.pni_init))
    return model


def _target(builder):
    return builder.__init__ if inspect.isclass(builder) else builder


def check_config(cfg) -> None:
    """Load-time checks of the `model` section: a registered name, `model.kwargs` keys the model
    accepts, and the model's own value checks (a `check_kwargs(kwargs)` static method)."""
    _load_builtin()
    builder = MODELS.get(cfg.name)
    params = inspect.signature(_target(builder)).parameters
    open_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for k in dict(cfg.kwargs):
        if k in _COMMON:
            raise ConfigError(f"key 'model.kwargs.{k}': set 'model.{k}' instead")
        if not open_kw and k not in params:
            allowed = [n for n in params if n not in ("self",) + _COMMON]
            raise ConfigError(f"key 'model.kwargs.{k}': model '{cfg.name}' has no option '{k}'; "
                              f"its options: {', '.join(allowed) or 'none'}")
    check = getattr(builder, "check_kwargs", None)
    if callable(check):
        check(model_kwargs(cfg))
    if cfg.sync_bn:
        import torch
        from torch import nn
        with torch.device("meta"):
            model = create_model(cfg)
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ConfigError(f"key 'model.sync_bn': model '{cfg.name}' has no BatchNorm layer to synchronise")


def randomized_at_test(cfg) -> bool:
    """Whether the configured model draws noise in evaluation (its builder's `randomized_at_test(kwargs)`)."""
    _load_builtin()
    fn = getattr(MODELS.get(cfg.name), "randomized_at_test", None)
    return bool(fn(model_kwargs(cfg))) if callable(fn) else False


def check_data(cfg, image_size: int, in_channels: int) -> None:
    """Model-vs-data checks when a run starts: channels, and the input side for models with a
    head sized for one resolution (`fixed_image_size`) or a minimum (`min_image_size`)."""
    _load_builtin()
    builder = MODELS.get(cfg.name)
    if cfg.in_channels != in_channels:
        raise ConfigError(f"key 'model.in_channels': {cfg.in_channels}, but the data has {in_channels} channel(s)")
    cls = builder if inspect.isclass(builder) else None
    if cls is None:  # a factory function: read the attributes of what it returns (cheap: meta device)
        import torch
        with torch.device("meta"):
            cls = type(create_model(cfg))
    if getattr(cls, "fixed_image_size", False) and cfg.image_size != image_size:
        raise ConfigError(f"key 'model.image_size': {cfg.image_size}, but the model sees {image_size}x{image_size} "
                          f"inputs and '{cfg.name}' is sized for exactly model.image_size")
    if image_size < getattr(cls, "min_image_size", 1):
        raise ConfigError(f"key 'model.image_size': '{cfg.name}' needs inputs of at least "
                          f"{cls.min_image_size}x{cls.min_image_size}, the data gives {image_size}x{image_size} "
                          "(resize with data.augment.resize / stages[].image_size)")


def model_from_state(cfg, state_dict, source: str = "checkpoint"):
    """A fresh model of `cfg` (a ModelConfig) with `state_dict` loaded, in eval mode.
    A state that does not fit the model is a user error naming `source`."""
    from ..errors import UserError
    model = create_model(cfg)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise UserError(f"{source}: checkpoint does not fit model '{cfg.name}' "
                        f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    return model.eval()


def describe_model(cfg, image_size=None) -> dict:
    """`describe()` of the configured model: parameters and forward FLOPs per sample."""
    from .common import describe
    model = create_model(cfg)
    return describe(model, int(image_size or cfg.image_size), int(cfg.in_channels))


def available():
    _load_builtin()
    return MODELS.names()


__all__ = ["create_model", "model_from_state", "register_model", "available", "MODELS", "check_config",
           "check_data", "describe_model", "model_kwargs", "randomized_at_test"]
