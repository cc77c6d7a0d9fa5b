"""Sweep files: load, validate at load (exit 2 naming the key), expand into trials.

    spec = load_sweep("configs/sweeps/digits_eps.yaml", ["concurrency=1", "train.epochs=2"])
    trials = expand(spec)     # [Trial(id, params, member, cfg), ...], deterministic

A sweep file is a `SweepConfig` (scaletrain/config/schema.py, docs/sweeps.md). Command-line
`key=value` items whose first part is a sweep key (`concurrency=2`, `scheduler.name=asha`)
change the sweep; any other key path (`train.epochs=2`) is an experiment override applied
to every trial. Every trial's experiment config is built and validated here, before Ray
starts, so a misspelled key path in `space` stops the sweep at load.

Search (Bergstra & Bengio 2012 for random search; `search: optuna` is sweep_optuna.py): `grid` parameters form a Cartesian
product; `random` repeats it `num_samples` times, drawing the `choice`/`uniform`/
`loguniform`/`randint` parameters from `random.Random(seed)`. The draw happens here, not
inside Ray Tune, so the plan is the same on every invocation: that is what makes a killed
sweep resumable (the same command recomputes the same trials and skips finished ones).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import load_config, to_dict
from ..config.schema import SweepConfig
from ..config.validate import validate
from ..errors import ConfigError

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")
SEARCHES = ("random", "grid", "optuna")
INTERMEDIATE = ("val_acc", "val_loss", "val_pgd_acc", "loss", "acc")


@dataclass
class Trial:
    id: str                    # folder name under <sweep>/trials and the run's name
    params: Dict[str, Any]     # swept key path -> value (plus `seed` for ensemble members)
    config_id: str             # the configuration (members of one ensemble share it)
    member: int                # index within the ensemble (0 without ensembles)
    cfg: Dict[str, Any]        # the full, validated experiment config


@dataclass
class SweepSpec:
    sweep: DictConfig
    base: DictConfig           # experiment config of the base + overrides (no swept values)
    base_path: str
    overrides: List[str]       # experiment dotlist applied to every trial
    folder: str                # <out_dir>/<name>


def _fail(key: str, msg: str) -> ConfigError:
    return ConfigError(f"sweep key '{key}': {msg}")


def _dot(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def load_sweep(path: str, argv: Sequence[str] = ()) -> SweepSpec:
    if not os.path.isfile(path):
        raise ConfigError(f"sweep file not found: {path}")
    try:
        data = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - YAML errors of any kind
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    sweep_keys = {f.name for f in dataclasses.fields(SweepConfig)}
    mine, exp = [], []
    for item in argv:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        (mine if item.split("=", 1)[0].split(".")[0] in sweep_keys else exp).append(item)
    try:
        sweep = OmegaConf.merge(OmegaConf.structured(SweepConfig), data, OmegaConf.from_dotlist(mine))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: key '{getattr(e, 'full_key', '') or '?'}': {str(e).splitlines()[0]}") from None
    base_path = None
    if sweep.base:
        base_path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), sweep.base))
        if not os.path.isfile(base_path):
            raise _fail("base", f"file not found: {base_path}")
    overrides = [_dot(k, v) for k, v in to_dict(sweep.overrides).items()] + exp
    base = load_config(base_path, overrides)
    _validate(sweep, base)
    folder = os.path.abspath(os.path.join(sweep.out_dir, sweep.name))
    spec = SweepSpec(sweep, base, base_path or "", overrides, folder)
    expand(spec)     # builds and validates every trial's config now, before any Ray work
    return spec


def final_metrics(cfg: DictConfig) -> List[str]:
    """The names `evaluate.ensemble.scalar_metrics` gives this config's report."""
    names = ["clean_acc", "robustness_score", "critical_eps/median", "train_seconds"]
    curves = list(cfg.eval.attacks) + (["autoattack"] if cfg.eval.autoattack else []) + ["worst_case"]
    for c in curves:
        names += [f"{c}/acc@{e:g}" for e in cfg.eval.eps] + [f"{c}/auc"]
    names += [f"noise/acc@{s:g}" for s in cfg.eval.noise_sigmas]
    names += [f"certify/acc@{r:g}" for r in (cfg.eval.certify or {}).get("radii", [])]
    return names


def metric_name(name: str) -> str:
    """W&B spells the report's metrics `eval/pgd/acc@0.2`; both spellings are accepted."""
    return name[len("eval/"):] if name.startswith("eval/") else name


def _validate(s: DictConfig, base: DictConfig) -> None:
    if not s.name or "/" in s.name:
        raise _fail("name", f"must be a plain folder name, got '{s.name}'")
    if s.mode not in ("max", "min"):
        raise _fail("mode", f"'{s.mode}' is not one of max, min")
    if s.search not in SEARCHES:
        raise _fail("search", f"'{s.search}' is not one of {', '.join(SEARCHES)}")
    if s.search == "optuna" and s.ensemble.size > 1:
        raise _fail("ensemble.size", "search: optuna samples one configuration per trial; ensembles need "
                                     "search: random or grid")
    for key in ("num_samples", "resources.workers", "ensemble.size"):
        if OmegaConf.select(s, key) < 1:
            raise _fail(key, f"must be >= 1, got {OmegaConf.select(s, key)}")
    for key in ("concurrency", "ensemble.concurrency", "resources.gpus_per_worker"):
        if OmegaConf.select(s, key) < 0:
            raise _fail(key, f"must be >= 0, got {OmegaConf.select(s, key)}")
    if s.resources.cpus_per_worker <= 0:
        raise _fail("resources.cpus_per_worker", f"must be > 0, got {s.resources.cpus_per_worker}")
    if not s.space and s.ensemble.size == 1 and s.num_samples == 1:
        raise _fail("space", "empty: give at least one key path to sweep (or ensemble.size > 1)")
    for key, dist in s.space.items():
        _check_dist(f"space.{key}", dist, s.search)
    if "seed" in s.space and s.ensemble.size > 1:
        raise _fail("space.seed", "ensemble members take seeds seed, seed+1, ...: sweep another key")
    s.metric = metric_name(s.metric)
    known = final_metrics(base) + list(INTERMEDIATE)
    if s.metric not in known:
        raise _fail("metric", f"'{s.metric}' is not a metric these runs report; one of: {', '.join(known)}")
    sch = s.scheduler
    if sch.name not in ("none", "asha"):
        raise _fail("scheduler.name", f"'{sch.name}' is not one of none, asha")
    if sch.name == "asha":
        m = sch.metric or s.metric
        if m not in INTERMEDIATE:
            raise _fail("scheduler.metric", f"ASHA needs a metric reported during training, one of "
                                            f"{', '.join(INTERMEDIATE)}; got '{m}'")
        if m.startswith("val_") and not base.train.eval_every_epochs:
            raise _fail("scheduler.metric", f"'{m}' is reported only with train.eval_every_epochs >= 1 "
                                            "(set it in overrides)")
        if m == "val_pgd_acc" and base.train.eval_eps == 0:
            raise _fail("scheduler.metric", "val_pgd_acc needs train.eval_eps > 0")
        if sch.mode not in ("max", "min"):
            raise _fail("scheduler.mode", f"'{sch.mode}' is not one of max, min")
        if sch.grace_period < 1 or sch.reduction_factor < 2:
            raise _fail("scheduler", "grace_period must be >= 1 and reduction_factor >= 2")
        max_t = sch.max_t if sch.max_t is not None else base.train.epochs
        if max_t <= sch.grace_period:
            raise _fail("scheduler.grace_period", f"must be < the trial's epochs ({max_t}) for ASHA to stop "
                                                  f"anything, got {sch.grace_period}")


def _check_dist(key: str, dist: Any, search: str) -> None:
    if not isinstance(dist, (dict, DictConfig)) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise _fail(key, f"must be one of {{{' | '.join(d + ': ...' for d in DISTRIBUTIONS)}}}, got {dist}")
    kind, arg = next(iter(dist.items()))
    arg = OmegaConf.to_container(arg) if OmegaConf.is_config(arg) else arg
    if kind == "grid" and search == "optuna":
        raise _fail(f"{key}.grid", "search: optuna does not take grid parameters (Optuna samples every "
                                   "parameter; use choice, or search: random/grid)")
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise _fail(f"{key}.{kind}", "must be a non-empty list of values")
        if search == "optuna" and not all(v is None or isinstance(v, (bool, int, float, str)) for v in arg):
            raise _fail(f"{key}.{kind}", f"search: optuna takes only scalar choices (None, bool, int, float, "
                                         f"str), got {arg}")
        return
    if search == "grid":
        raise _fail(f"{key}.{kind}", "search: grid takes only grid/choice parameters (or use search: random)")
    if not isinstance(arg, list) or len(arg) != 2 or not all(isinstance(v, (int, float)) for v in arg):
        raise _fail(f"{key}.{kind}", f"must be [low, high], got {arg}")
    lo, hi = arg
    if not lo < hi:
        raise _fail(f"{key}.{kind}", f"low must be < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise _fail(f"{key}.{kind}", f"bounds must be > 0, got [{lo}, {hi}]")
    if kind == "randint" and not all(isinstance(v, int) for v in arg):
        raise _fail(f"{key}.{kind}", f"bounds must be integers, got [{lo}, {hi}]")


def _sample(kind: str, arg, rng: random.Random):
    if kind == "choice":
        return arg[rng.randrange(len(arg))]
    if kind == "uniform":
        return rng.uniform(*arg)
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(arg[0]), math.log(arg[1])))
    return rng.randrange(arg[0], arg[1])     # randint: [low, high), like ray.tune.randint


def configurations(s: DictConfig) -> List[Dict[str, Any]]:
    space = {k: next(iter(to_dict(v).items())) for k, v in s.space.items()}
    grid_keys = [k for k, (kind, _) in space.items() if kind == "grid" or (kind == "choice" and s.search == "grid")]
    rand_keys = [k for k in space if k not in grid_keys]
    rng = random.Random(int(s.seed))
    out = []
    for _ in range(int(s.num_samples)):
        for point in itertools.product(*[space[k][1] for k in grid_keys]):
            params = dict(zip(grid_keys, point))
            params.update({k: _sample(*space[k], rng) for k in rand_keys})
            out.append(params)
    return out


def trial_config(spec: SweepSpec, trial_id: str, params: Dict[str, Any], job_type: str) -> Dict[str, Any]:
    s, r = spec.sweep, spec.sweep.resources
    fixed = [f"name={trial_id}", f"out_dir={os.path.join(spec.folder, 'trials')}", "resume=auto",
             f"tracking.group={s.name}", f"tracking.job_type={job_type}", f"engine.workers={r.workers}",
             f"engine.launcher={'ray' if r.workers > 1 else 'local'}", f"engine.cpus_per_worker={r.cpus_per_worker}",
             f"engine.gpus_per_worker={r.gpus_per_worker}", "train.progress=false", "ensemble.size=1"]
    where = f"sweep trial {trial_id} ({_describe(params)})"
    try:
        cfg = OmegaConf.merge(spec.base, OmegaConf.from_dotlist([_dot(k, v) for k, v in params.items()] + fixed))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{where}: key '{getattr(e, 'full_key', '') or '?'}': {str(e).splitlines()[0]}") from None
    try:
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return to_dict(cfg)


def _describe(params: Dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def probe_points(s: DictConfig) -> List[Dict[str, Any]]:
    """Points covering the space's corners and every choice (search: optuna validates these at load:
    its trials are drawn during the sweep)."""
    space = {k: next(iter(to_dict(v).items())) for k, v in s.space.items()}
    low = {k: arg[0] for k, (kind, arg) in space.items()}
    high = {k: arg[-1] if kind in ("grid", "choice") else (arg[1] - 1 if kind == "randint" else arg[1])
            for k, (kind, arg) in space.items()}
    points = [low, high]
    for k, (kind, arg) in space.items():
        if kind in ("grid", "choice"):
            points += [dict(low, **{k: v}) for v in arg[1:-1]]
    return points


def expand(spec: SweepSpec) -> Tuple[List[Trial], str]:
    """All trials of the sweep, and a fingerprint of the plan (resume refuses another sweep's folder).
    search: optuna has no fixed plan (Optuna draws each trial from the results so far): no trials
    here; the corners of the space are validated, and the fingerprint covers space, seed and size."""
    s = spec.sweep
    if s.search == "optuna":
        for i, p in enumerate(probe_points(s)):
            trial_config(spec, f"probe{i}", p, "trial")
        plan = json.dumps([to_dict(s.space), int(s.seed), int(s.num_samples), spec.overrides], sort_keys=True,
                          default=str)
        return [], hashlib.sha256(("optuna" + plan).encode()).hexdigest()[:16]
    k = int(s.ensemble.size)
    trials = []
    for c, params in enumerate(configurations(s)):
        for m in range(k):
            p = dict(params)
            if k > 1:
                p["seed"] = int(spec.base.seed) + m
            tid = f"c{c:03d}-m{m}" if k > 1 else f"t{c:03d}"
            trials.append(Trial(tid, p, f"c{c:03d}", m,
                                trial_config(spec, tid, p, "member" if k > 1 else "trial")))
    plan = json.dumps([[t.id, t.params] for t in trials] + [spec.overrides], sort_keys=True, default=str)
    return trials, hashlib.sha256(plan.encode()).hexdigest()[:16]
