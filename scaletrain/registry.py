"""A tiny timm-style registry: `@register("name")` and `create(name, **kw)`.

One `Registry` per kind of component (models, attacks, methods, optimizers),
so that a config string selects an implementation and third-party code can
add its own without editing ours.
"""
from __future__ import annotations

from typing import Callable, Dict, List

from .errors import ConfigError


class Registry:
    def __init__(self, kind: str, config_key: str):
        self.kind = kind
        self.config_key = config_key
        self._items: Dict[str, Callable] = {}

    def register(self, name: str):
        def deco(fn):
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = fn
            return fn
        return deco

    def get(self, name: str) -> Callable:
        if name not in self._items:
            raise ConfigError(f"key '{self.config_key}': unknown {self.kind} '{name}'; "
                              f"available: {', '.join(sorted(self._items))}")
        return self._items[name]

    def create(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
