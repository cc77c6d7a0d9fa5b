"""Model registry. Every model takes [0, 1] pixels and normalises inside."""
from ..registry import Registry

MODELS = Registry("model", "model.name")
register_model = MODELS.register


def create_model(cfg):
    """Build the model named by a `ModelConfig` (section `model`)."""
    from . import cnn  # noqa: F401  (registers the built-in models)
    kw = dict(num_classes=cfg.num_classes, in_channels=cfg.in_channels, image_size=cfg.image_size,
              width=cfg.width, mean=list(cfg.mean), std=list(cfg.std))
    kw.update(dict(cfg.kwargs))
    model = MODELS.create(cfg.name, **kw)
    # generic model options, applied to any registered model (docs/methods.md)
    if getattr(cfg, "vib_dim", 0):
        from .vib import apply_vib
        apply_vib(model, int(cfg.vib_dim))
    if getattr(cfg, "pni", "off") != "off":
        from .pni import apply_pni
        apply_pni(model, cfg.pni, float(cfg.pni_init))
    return model


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


def available():
    from . import cnn  # noqa: F401
    return MODELS.names()


__all__ = ["create_model", "model_from_state", "register_model", "available", "MODELS"]
