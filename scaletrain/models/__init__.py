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
    return MODELS.create(cfg.name, **kw)


def available():
    from . import cnn  # noqa: F401
    return MODELS.names()


__all__ = ["create_model", "register_model", "available", "MODELS"]
