"""Stage sections resolved against the run, and validated at load.

A stage's `method` is a *partial* method section: `OmegaConf.merge(run.method, stage.method)`,
so `stages: [{method: {attack: {steps: 1}}}]` changes only the attack's steps and keeps the run's
method name, eps, options and add-ons. Every stage is checked when the config loads (before any
training): a mistake in stage 2 names `stages[1].method.attack.steps` and exits 2.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError

STAGE_SCHEDULES = ("constant", "cosine", "linear", "onecycle")
TOKEN_MASKS = ("random", "block")
OPTIMIZER_STATE = ("carry", "reset")
# value checks of the run's method section that also apply to a stage's merged method
_METHOD_CHOICES = {"attack.norm": ("linf", "l2"), "attack.loss": ("ce", "cw"),
                   "attack.model_mode": ("eval", "train")}
_METHOD_NON_NEGATIVE = ("attack.eps", "attack.steps")
_METHOD_POSITIVE = ("attack.restarts",)


def stage_method(cfg: DictConfig, i: int) -> Optional[DictConfig]:
    """The method section of stage `i`: the run's method with the stage's keys merged over it
    (None = the stage trains with the run's method unchanged)."""
    over = cfg.stages[i].method
    if over is None:
        return None
    key = f"stages[{i}].method"
    try:
        merged = OmegaConf.merge(cfg.method, over)
    except OmegaConfBaseException as e:
        sub = str(getattr(e, "full_key", None) or "")
        sub = sub[len("method."):] if sub.startswith("method.") else sub
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"key '{key}{'.' + sub if sub else ''}': {msg}") from None
    return merged


def check_stage_keys(data: DictConfig, where: str) -> None:
    """Unknown keys of `stages[i]` in a YAML file or the overrides, named with their index
    (OmegaConf's own message loses the list index)."""
    import difflib
    from dataclasses import fields

    from .schema import StageConfig
    stages = data.get("stages", None) if isinstance(data, DictConfig) else None
    if not OmegaConf.is_list(stages):
        return
    known = [f.name for f in fields(StageConfig)]
    for i, st in enumerate(stages):
        if not isinstance(st, DictConfig):
            continue
        for key in st.keys():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean 'stages[{i}].{close[0]}'?" if close else ""
                raise ConfigError(f"{where}: key 'stages[{i}].{key}': unknown stage key{hint}")


_ITEM = re.compile(r"^stages(?:\.(\d+)|\[(\d+)\])\.(.+)$")


def split_stage_overrides(overrides):
    """(other overrides, [(index, sub-key, raw value)]) for `stages.1.epochs=3` / `stages[1].lr=0.1`:
    a dotlist cannot merge into one item of a list, so these are applied by `apply_stage_overrides`."""
    rest, items = [], []
    for o in overrides:
        key, _, val = o.partition("=")
        m = _ITEM.match(key)
        if m:
            items.append((int(m.group(1) or m.group(2)), m.group(3), val))
        else:
            rest.append(o)
    return rest, items


def apply_stage_overrides(cfg: DictConfig, items) -> None:
    for i, sub, val in items:
        key = f"stages[{i}].{sub}"
        if i >= len(cfg.stages):
            raise ConfigError(f"override: key '{key}': the config has {len(cfg.stages)} stage(s)")
        try:
            value = OmegaConf.from_dotlist([f"v={val}"]).v
            OmegaConf.update(cfg.stages[i], sub, value, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"override: key '{key}': {str(e).splitlines()[0]}") from None


def _get(node, path: str) -> Any:
    for part in path.split("."):
        node = node[part]
    return node


def _check_method(m: DictConfig, key: str) -> None:
    for path, choices in _METHOD_CHOICES.items():
        if _get(m, path) not in choices:
            raise ConfigError(f"key '{key}.{path}': value '{_get(m, path)}' is not one of {', '.join(choices)}")
    for path in _METHOD_NON_NEGATIVE:
        if _get(m, path) < 0:
            raise ConfigError(f"key '{key}.{path}': must be >= 0, got {_get(m, path)}")
    for path in _METHOD_POSITIVE:
        if _get(m, path) <= 0:
            raise ConfigError(f"key '{key}.{path}': must be > 0, got {_get(m, path)}")
    if m.attack.alpha is not None and m.attack.alpha <= 0:
        raise ConfigError(f"key '{key}.attack.alpha': must be > 0 (or null), got {m.attack.alpha}")
    from ..attacks import attack_from_config
    try:
        attack_from_config(m.attack)         # attack name and its kwargs
    except ConfigError as e:
        raise ConfigError(str(e).replace("'method.attack", f"'{key}.attack")) from None
    from .. import methods
    check = getattr(methods, "check_method_config", None)
    if check is not None:                     # the method contract's own checks (names, options)
        check(m, key)
    elif m.name not in methods.available():
        raise ConfigError(f"key '{key}.name': unknown method '{m.name}'; "
                          f"available: {', '.join(methods.available())}")


def _is_vit(cfg: DictConfig) -> bool:
    return str(cfg.model.name).startswith("vit")


def validate_stages(cfg: DictConfig) -> None:
    """Every stage's values, and its merged method/attack, checked at load."""
    if any(st.method is not None for st in cfg.stages):  # a mistake in the run's own method names `method.*`
        from ..methods import check_method_config
        check_method_config(cfg.method, "method")
    for i, st in enumerate(cfg.stages):
        k = f"stages[{i}]"
        if st.epochs is not None and st.epochs < 0:
            raise ConfigError(f"key '{k}.epochs': must be >= 0, got {st.epochs}")
        if st.samples is not None and st.samples <= 0:
            raise ConfigError(f"key '{k}.samples': must be > 0 (or null), got {st.samples}")
        if st.lr is not None and st.lr < 0:
            raise ConfigError(f"key '{k}.lr': must be >= 0, got {st.lr}")
        if st.warmup_steps is not None and st.warmup_steps < 0:
            raise ConfigError(f"key '{k}.warmup_steps': must be >= 0, got {st.warmup_steps}")
        if st.schedule is not None and st.schedule not in STAGE_SCHEDULES:
            raise ConfigError(f"key '{k}.schedule': value '{st.schedule}' is not one of "
                              f"{', '.join(STAGE_SCHEDULES)}")
        if st.token_mask not in TOKEN_MASKS:
            raise ConfigError(f"key '{k}.token_mask': value '{st.token_mask}' is not one of {', '.join(TOKEN_MASKS)}")
        if st.optimizer_state not in OPTIMIZER_STATE:
            raise ConfigError(f"key '{k}.optimizer_state': value '{st.optimizer_state}' is not one of "
                              f"{', '.join(OPTIMIZER_STATE)}")
        if st.token_keep is not None:
            if not 0.0 < st.token_keep <= 1.0:
                raise ConfigError(f"key '{k}.token_keep': must be in (0, 1], got {st.token_keep}")
            if st.token_keep < 1.0 and not _is_vit(cfg):
                raise ConfigError(f"key '{k}.token_keep': token reduction needs a ViT (model.name vit*), "
                                  f"not '{cfg.model.name}'; use {k}.image_size to make a CNN stage cheaper")
        if st.image_size is not None:
            if st.image_size <= 0:
                raise ConfigError(f"key '{k}.image_size': must be > 0, got {st.image_size}")
            patch = int(cfg.model.kwargs.get("patch_size", 16)) if _is_vit(cfg) else 1
            if st.image_size % patch:
                raise ConfigError(f"key '{k}.image_size': {st.image_size} is not a multiple of the ViT "
                                  f"patch size {patch}")
        m = stage_method(cfg, i)
        if m is not None:
            _check_method(m, f"{k}.method")
