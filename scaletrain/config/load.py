"""Load an experiment config: schema defaults <- YAML file <- key=value overrides.

Errors name the key path (or the file) and are raised as `ConfigError`.
"""
from __future__ import annotations

import difflib
import os
from typing import Iterable, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf, StringNode
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from .schema import ExperimentConfig
from .stages import apply_stage_overrides, check_stage_keys, split_stage_overrides
from .validate import validate


def _describe(exc: OmegaConfBaseException, where: str) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # OmegaConf messages repeat the key; keep the first line, prefix the key path.
    if key:
        return f"{where}: key '{key}': {msg}"
    return f"{where}: {msg}"


def _read_yaml(path: str) -> DictConfig:
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"config path is a folder, not a YAML file: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return OmegaConf.create(data)


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"override '{o}' is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, "overrides")) from None


def _keep_strings_verbatim(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """A string-typed key takes the override's text as written: YAML would read `name=on` as the
    boolean true (stored as 'True'), `name=0x10` as 16 and `name=010` as 8. Quotes are removed;
    null/~ stay None for optional keys."""
    for o in overrides:
        key, raw = o.split("=", 1)
        key = key.lstrip("+~")
        parent_key, _, leaf = key.rpartition(".")
        try:
            parent = OmegaConf.select(cfg, parent_key, throw_on_missing=False) if parent_key else cfg
            node = parent._get_node(leaf) if isinstance(parent, DictConfig) else None
        except OmegaConfBaseException:
            continue
        if not isinstance(node, StringNode) or raw.strip() in ("null", "~", ""):
            continue
        text = raw.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]
        OmegaConf.update(cfg, key, text, merge=False)


def _check_key_exists(cfg: DictConfig, key: str) -> None:
    """Name the whole override key (not just its first unknown part) and suggest a fix."""
    node = cfg
    parts = key.lstrip("+~").split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig) or OmegaConf.is_missing(node, part) or node._is_none():
            return  # lists, open dicts and None values: leave it to the merge
        if part not in node:
            if OmegaConf.get_type(node) is dict:  # Dict[str, Any] sections accept new keys
                return
            close = difflib.get_close_matches(part, [str(k) for k in node.keys()], n=1)
            hint = f"; did you mean '{'.'.join(parts[:i] + [close[0]])}'?" if close else ""
            raise ConfigError(f"override: key '{key}': unknown key '{part}'{hint}")
        node = node._get_node(part)
        if not isinstance(node, DictConfig):
            return


def load_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Return a validated, structured `DictConfig` of `ExperimentConfig`."""
    cfg = OmegaConf.structured(ExperimentConfig)
    if path:
        data = _read_yaml(path)
        check_stage_keys(data, path)
        try:
            cfg = OmegaConf.merge(cfg, data)
        except OmegaConfBaseException as e:
            raise ConfigError(_describe(e, path)) from None
    overrides, stage_items = split_stage_overrides(list(overrides))
    if overrides:
        dotlist = _parse_overrides(overrides)
        check_stage_keys(dotlist, "override")
        for o in overrides:
            _check_key_exists(cfg, o.split("=", 1)[0])
        try:
            cfg = OmegaConf.merge(cfg, dotlist)
        except OmegaConfBaseException as e:
            raise ConfigError(_describe(e, "override")) from None
        _keep_strings_verbatim(cfg, overrides)
    apply_stage_overrides(cfg, stage_items)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, "interpolation")) from None
    validate(cfg)
    return cfg


def config_from_dict(data: dict) -> DictConfig:
    """Rebuild a structured config from a plain dict (e.g. a saved config.yaml)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), OmegaConf.create(data))
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, "saved config")) from None
    validate(cfg)
    return cfg


def save_config(cfg: DictConfig, path: str) -> None:
    """Write the fully resolved config as YAML (atomically)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
