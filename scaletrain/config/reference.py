"""Generate the configuration reference (docs/configuration.md) from the schema.

    python -m scaletrain.config.reference > docs/configuration.md

The defaults come from the dataclasses themselves and the meanings from the
comments beside each field, so the reference cannot drift from the code
(tests/config checks the committed file is current).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Dict, List

from . import schema

HEADER = """# Configuration reference

A run is configured by one `ExperimentConfig` (`scaletrain/config/schema.py`):
schema defaults, then a YAML file, then `key=value` overrides
(`scaletrain train [CONFIG] [key=value ...]`). Unknown keys, wrong types and
values outside a key's choices stop the run with one line naming the key and
exit code 2. Each run writes its fully resolved config to `runs/<name>/config.yaml`;
`scaletrain train --print-config` prints it without running.

Sections below are nested under the top-level key given in brackets, e.g.
`method.attack.eps=0.3`. `Dict` keys (`kwargs`, `engine.deepspeed`,
`eval.certify`) accept free-form entries.

This file is generated: `python -m scaletrain.config.reference > docs/configuration.md`.
"""

SECTIONS = [("ExperimentConfig", "top level"), ("DataConfig", "data"), ("AugmentConfig", "data.augment"),
            ("ModelConfig", "model"), ("MethodConfig", "method"), ("AttackConfig", "method.attack"),
            ("OptimConfig", "optim"), ("LangevinConfig", "optim.langevin"), ("EngineConfig", "engine"), ("TrainConfig", "train"),
            ("StageConfig", "stages[i]"), ("EvalConfig", "eval"), ("TrackConfig", "tracking"),
            ("EnsembleConfig", "ensemble"),
            ("SweepConfig", "sweep file (scaletrain sweep)"), ("SchedulerConfig", "sweep: scheduler"),
            ("SweepResources", "sweep: resources"), ("EnsembleConfig", "sweep: ensemble")]


def _comments(cls) -> Dict[str, str]:
    out = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+):[^#]*#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).replace("|", "/")
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        v = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(v):
            return f"section {type(v).__name__}"
        return repr(v)
    return "required"


def _type(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return t.replace("|", "/")


def _table(cls) -> List[str]:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    notes = _comments(cls)
    for f in dataclasses.fields(cls):
        d = _default(f)
        d = d if d.startswith("section ") else f"`{d}`"
        lines.append(f"| `{f.name}` | `{_type(f)}` | {d} | {notes.get(f.name, '')} |")
    return lines


METHOD_KWARGS = """
## `method.kwargs` (options of built-in methods that keep their own)

Most built-in methods take typed keys of `method` (above) and refuse `method.kwargs`. These
keep a set of their own in `method.kwargs`, typed by the method's dataclass: an unknown option,
a wrong type or a value out of range stops the run at load naming `method.kwargs.<option>` (exit 2).
"""

ADDONS = """
## `method.extra[i].kwargs` (options of the built-in add-ons)

Each add-on composed through `method.extra` (docs/methods.md) takes its options as
`kwargs` of its entry, e.g. `method.extra=[{name: cutmix, kwargs: {alpha: 0.5}}]`. They are
typed by the add-on's own dataclass: an unknown option, a wrong type or a value out of
range stops the run at load naming `method.extra.<i>.kwargs.<option>` (exit 2).
"""


def _method_options(loss: bool):
    """(name, options dataclass) of the built-in loss methods (`loss`) or add-ons that take options."""
    from ..methods import METHODS, Event, available
    out = []
    for name in available():
        cls = METHODS.get(name)
        opts = getattr(cls, "Options", None)
        if (cls.__module__.startswith("scaletrain.") and (Event.LOSS in cls.events) == loss
                and dataclasses.is_dataclass(opts) and dataclasses.fields(opts)):
            out.append((name, opts))
    return out


def render() -> str:
    lines: List[str] = [HEADER]
    for name, where in SECTIONS:
        cls = getattr(schema, name)
        lines.append(f"\n## `{where}` ({name})\n")
        doc = inspect.getdoc(cls)
        if doc and not doc.startswith(name + "("):
            lines.append(doc + "\n")
        lines += _table(cls)
    for intro, loss in ((METHOD_KWARGS, True), (ADDONS, False)):
        lines.append(intro)
        for name, opts in _method_options(loss):
            lines.append(f"\n### `{name}` ({opts.__name__})\n")
            lines += _table(opts)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
