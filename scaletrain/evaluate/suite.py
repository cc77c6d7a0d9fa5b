"""The robustness evaluation suite: ``evaluate_model(model, loader, cfg.eval) -> report``.

How a run is organised (docs/evaluation.md has the definitions):

1. The loader's samples are re-cut into *global batches* of ``cfg.batch_size`` in
   stream order (the first ``cfg.max_samples`` only). Global batch ``b`` is
   evaluated by rank ``b % world_size``; every rank reads the full stream, which
   is cheap next to the attacks.
2. Every random draw for batch ``b`` (attack starts, restarts, Gaussian noise,
   smoothing noise) comes from a generator seeded by (cfg.seed, what, b), so the
   numbers do not depend on the number of ranks or on the loader's own batching.
3. Per rank, results are integer counts plus per-sample records keyed by the
   global sample index; ranks are reduced with ``all_gather_object`` and sorted
   by index, so N ranks give exactly the 1-rank report.
4. After every global batch the accumulated state can be written to
   ``state_file``; a re-run with the same file and configuration skips the
   batches already done.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from typing import Any, Dict, Iterable, List, Optional

import torch
from tqdm.auto import tqdm

from ..attacks import ATTACKS, ModelMode, create_attack
from ..attacks import _accepted_names
from ..errors import ConfigError, UserError
from ..rng import SampleRNG

STATE_VERSION = 1


# ---------------------------------------------------------------- helpers
def seed_for(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and runs)."""
    h = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def make_generator(device, *parts) -> torch.Generator:
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed_for(*parts))
    return g


def normalised_auc(eps: List[float], acc: List[float]) -> float:
    """Trapezoidal area under acc(eps) over [0, max eps], divided by max eps (in [0, 1]).
    With a single point (max eps = 0) it is that accuracy."""
    if len(eps) == 1 or eps[-1] <= 0:
        return float(acc[0])
    area = sum((eps[i + 1] - eps[i]) * (acc[i + 1] + acc[i]) / 2 for i in range(len(eps) - 1))
    return float(area / (eps[-1] - eps[0]))


def rebatch(loader: Iterable, batch_size: int, max_samples: Optional[int] = None):
    """Yield (global_batch_index, first_sample_index, x, y), re-cut to ``batch_size``."""
    buf_x, buf_y, have, start, b, seen = [], [], 0, 0, 0, 0
    for x, y in loader:
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if max_samples is not None:
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        seen += x.shape[0]
        buf_x.append(x)
        buf_y.append(y)
        have += x.shape[0]
        while have >= batch_size:
            xs, ys = torch.cat(buf_x), torch.cat(buf_y)
            yield b, start, xs[:batch_size], ys[:batch_size]
            b, start = b + 1, start + batch_size
            buf_x, buf_y, have = [xs[batch_size:]], [ys[batch_size:]], have - batch_size
        if max_samples is not None and seen >= max_samples:
            break
    if have:
        yield b, start, torch.cat(buf_x), torch.cat(buf_y)


def _check_cfg(cfg) -> None:
    if not list(cfg.eps):
        raise ConfigError("key 'eval.eps': the epsilon grid is empty")
    for i, e in enumerate(cfg.eps):
        if e < 0:
            raise ConfigError(f"key 'eval.eps.{i}': epsilon must be >= 0, got {e}")
    for i, a in enumerate(cfg.attacks):
        name, _ = parse_attack_spec(a, f"eval.attacks.{i}")
        if name not in ATTACKS:
            raise ConfigError(f"key 'eval.attacks.{i}': unknown attack '{name}'; available: "
                              f"{', '.join(ATTACKS.names())}")
        try:
            build_eval_attack(a, 0.1, cfg)
        except ConfigError as e:
            raise ConfigError(f"key 'eval.attacks.{i}': {e}") from None
    for i, s in enumerate(cfg.noise_sigmas):
        if s < 0:
            raise ConfigError(f"key 'eval.noise_sigmas.{i}': sigma must be >= 0, got {s}")
    if cfg.norm not in ("linf", "l2"):
        raise ConfigError(f"key 'eval.norm': value '{cfg.norm}' is not one of linf, l2")
    if cfg.model_mode not in ("eval", "train"):
        raise ConfigError(f"key 'eval.model_mode': value '{cfg.model_mode}' is not one of eval, train")
    for key in ("pgd_steps", "restarts", "autoattack_steps", "eot_samples"):
        if int(getattr(cfg, key, 1)) <= 0:
            raise ConfigError(f"key 'eval.{key}': must be > 0, got {getattr(cfg, key)}")
    if cfg.pgd_alpha is not None and cfg.pgd_alpha <= 0:
        raise ConfigError(f"key 'eval.pgd_alpha': must be > 0 or null, got {cfg.pgd_alpha}")
    if cfg.certify:
        from .certify import settings
        settings(cfg.certify)
    if cfg.batch_size <= 0:
        raise ConfigError(f"key 'eval.batch_size': must be > 0, got {cfg.batch_size}")
    if cfg.max_samples is not None and cfg.max_samples <= 0:
        raise ConfigError(f"key 'eval.max_samples': must be > 0 or null, got {cfg.max_samples}")


def eps_grid(cfg) -> List[float]:
    """The curve's abscissae: the configured grid, sorted, deduplicated, with 0 (clean) added."""
    return sorted({0.0, *[float(e) for e in cfg.eps]})


def parse_attack_spec(spec: str, key: str = "eval.attacks"):
    """``"pgd"`` -> ("pgd", {}); ``"pgd:loss=cw,restarts=5"`` -> ("pgd", {"loss": "cw", "restarts": 5})."""
    import yaml
    name, _, rest = str(spec).partition(":")
    kw = {}
    for item in filter(None, (t.strip() for t in rest.split(","))):
        k, eq, v = item.partition("=")
        if not eq or not k.strip():
            raise ConfigError(f"key '{key}': '{spec}' - options look like name:key=value,key=value")
        kw[k.strip()] = yaml.safe_load(v.strip())
    return name.strip(), kw


def build_eval_attack(spec: str, eps: float, cfg):
    """The attack ``spec`` at ``eps`` as the suite runs it: cfg.norm, cfg.pgd_steps, cfg.pgd_alpha,
    cfg.restarts, cfg.model_mode and the worst iterate per sample, then the spec's own options
    (``"pgd:loss=cw,steps=50"``) on top."""
    name, opts = parse_attack_spec(spec)
    cls = ATTACKS.get(name)
    kw = {"track_best": True} if "track_best" in _accepted_names(cls) else {}
    common = dict(alpha=cfg.pgd_alpha, steps=cfg.pgd_steps if getattr(cls, "eval_steps", True) else None,
                  norm=cfg.norm, random_start=True, restarts=cfg.restarts, model_mode=cfg.model_mode)
    common.update({k: v for k, v in opts.items() if k in common or k in ("loss", "targeted")})
    kw.update({k: v for k, v in opts.items() if k not in common and k not in ("loss", "targeted")})
    kw.setdefault("eot", int(getattr(cfg, "eot_samples", 1)))   # EOT gradients for randomised models
    return create_attack(name, eps=eps, **common, **kw)


def _cfg_dict(cfg) -> Dict[str, Any]:
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    from dataclasses import asdict, is_dataclass
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


# ---------------------------------------------------------------- per-rank state
class _State:
    """Everything a rank has accumulated; JSON-serialisable for the resume file."""

    def __init__(self, attacks: List[str], grid: List[float], sigmas: List[float]):
        self.next_batch = 0
        self.n = 0
        self.clean = 0
        self.correct = {a: [0] * len(grid) for a in attacks}   # counts per eps index
        self.worst = [0] * len(grid)
        self.noise = [0] * len(sigmas)
        self.aa = [0] * len(grid)
        self.samples: List[list] = []   # [global index, label, clean ok, {attack: first flip idx or -1}, worst idx]
        self.certify: List[list] = []   # [global index, label, prediction (-1 = abstain), radius]
        self.seconds = 0.0

    def to_json(self):
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d):
        s = cls.__new__(cls)
        s.__dict__.update(d)
        return s


def _fingerprint(cfg_dict, rank, world_size, model) -> str:
    """Config, ranks and a hash of the model's weights: a state file only resumes the same evaluation."""
    h = hashlib.sha256(json.dumps([cfg_dict, rank, world_size], sort_keys=True, default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _load_state(path, fp):
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read evaluation state file '{path}': {e}") from None
    if d.get("version") != STATE_VERSION or d.get("fingerprint") != fp:
        raise UserError(f"evaluation state file '{path}' belongs to a different evaluation "
                        "(config, ranks or model differ); delete it or pass another state file")
    return _State.from_json(d["state"])


def _save_state(path, fp, state):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"version": STATE_VERSION, "fingerprint": fp, "state": state.to_json()}, f)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the batch step
@torch.no_grad()
def _predict(model, x, mode):
    with ModelMode(model, mode):
        return model(x).float().argmax(1)


def attack_curve(model, x, y, ok_clean, grid, cfg, make_attack, rng) -> torch.Tensor:
    """(n, len(grid)) booleans: sample still correctly classified under the attack at grid[j].

    Only samples correct on clean inputs are attacked. With ``cfg.nested`` (the default) a sample
    the attack broke at a smaller epsilon is counted as broken at every larger one without being
    attacked again: the adversarial point found lies in every larger ball (the balls are nested),
    so the count is exact, not an estimate. A sample's random draws at grid[j] come from its own
    stream (``rng``: seeded by (seed, what, j, global index)), so the samples that are attacked get
    exactly the attack they would get in an independent run of that epsilon; hence, per sample,
    nested = (independent at grid[j]) AND (independent at every smaller epsilon), which is never
    more robust than the independent column and equal to it wherever the independent curve is
    monotone (docs/evaluation.md, tests/evaluate/test_shortcuts.py). ``eval.nested=false`` attacks
    every epsilon independently (a non-monotone curve is a sign of gradient masking)."""
    n = x.shape[0]
    mat = torch.zeros(n, len(grid), dtype=torch.bool, device=x.device)
    alive = ok_clean.clone()
    for j, e in enumerate(grid):
        if e == 0:
            mat[:, j] = ok_clean
            continue
        todo = alive if getattr(cfg, "nested", True) else ok_clean
        idx = todo.nonzero().squeeze(1)
        col = torch.zeros(n, dtype=torch.bool, device=x.device)
        if idx.numel():
            x_adv = make_attack(e)(model, x[idx], y[idx], rng.fork(j).subset(idx.cpu()))
            col[idx] = _predict(model, x_adv, cfg.model_mode) == y[idx]
        mat[:, j] = col
        alive &= col
    return mat


def _eval_batch(model, x, y, b, first, cfg, grid, st: _State, extras):
    n = x.shape[0]
    ok_clean = _predict(model, x, cfg.model_mode) == y
    st.n += n
    st.clean += int(ok_clean.sum())
    # ok[a][:, j]: sample still correct under attack a at grid[j]
    index = torch.arange(first, first + n)      # global sample indices: each sample's random streams
    ok = {}
    for name in cfg.attacks:
        make = lambda e, name=name: build_eval_attack(name, e, cfg)  # noqa: E731
        ok[name] = attack_curve(model, x, y, ok_clean, grid, cfg, make, SampleRNG(cfg.seed, index, "attack", name))
        st.correct[name] = [c + int(v) for c, v in zip(st.correct[name], ok[name].sum(0).tolist())]
    worst = ok_clean[:, None].expand(n, len(grid)).clone()
    for mat in ok.values():
        worst &= mat
    if "autoattack" in extras:
        mat = extras["autoattack"](model, x, y, index, ok_clean)
        st.aa = [c + int(v) for c, v in zip(st.aa, mat.sum(0).tolist())]
        worst &= mat
        ok["autoattack"] = mat
    st.worst = [c + int(v) for c, v in zip(st.worst, worst.sum(0).tolist())]
    for k, s in enumerate(cfg.noise_sigmas):
        gen = make_generator(x.device, cfg.seed, "noise", k, b)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=torch.float32).to(x.dtype)
        st.noise[k] += int((_predict(model, (x + s * noise).clamp(0, 1), cfg.model_mode) == y).sum())

    def first_flip(mat):  # index of the smallest grid eps at which the sample is wrong, -1 = never
        wrong = ~mat
        return torch.where(wrong.any(1), wrong.float().argmax(1), torch.full_like(wrong[:, 0], -1, dtype=torch.long))

    flips = {a: first_flip(m).tolist() for a, m in ok.items()}
    worst_flip = first_flip(worst).tolist()
    yl, okl = y.tolist(), ok_clean.tolist()
    for i in range(n):
        st.samples.append([first + i, yl[i], bool(okl[i]), {a: f[i] for a, f in flips.items()}, worst_flip[i]])
    if "certify" in extras:
        st.certify.extend(extras["certify"](model, x, y, b, first))


# ---------------------------------------------------------------- public entry
def evaluate_model(model, loader, cfg, *, device="cpu", rank: int = 0, world_size: int = 1,
                   progress: bool = True, state_file: Optional[str] = None) -> Dict[str, Any]:
    """Run the robustness suite of ``cfg`` (an ``EvalConfig``) on ``model`` over ``loader``.

    ``loader`` yields (x, y) batches of the *whole* evaluation set in a fixed order
    (do not pre-shard it): with ``world_size > 1`` (torch.distributed initialised)
    each rank evaluates global batches ``b % world_size == rank`` and every rank
    returns the same reduced report. ``state_file`` (per rank: ``.rankR`` is appended
    when world_size > 1) makes the run resumable after an interruption.
    """
    _check_cfg(cfg)
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(eval_threads(cfg, world_size))
    try:
        return _evaluate(model, loader, cfg, device, rank, world_size, progress, state_file)
    finally:
        torch.set_num_threads(threads)


def eval_threads(cfg, world_size: int = 1) -> int:
    """Torch threads per evaluating process on CPU: ``eval.cpu_threads``, or with 0 (the default) the
    cores this process may run on shared among the ``world_size`` local ranks: a run alone on its
    machine uses all of it. On a machine shared with other jobs set ``eval.cpu_threads`` (1 keeps
    each rank on one core). The count takes part in the numbers (conv reductions split by thread), so
    `scaletrain eval` reproduces a run's report bit for bit with the same count - with the default,
    on the same machine."""
    n = int(getattr(cfg, "cpu_threads", 0) or 0)
    if n > 0:
        return n
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(int(world_size), 1))


def _evaluate(model, loader, cfg, device, rank, world_size, progress, state_file):
    grid = eps_grid(cfg)
    cfg_dict = _cfg_dict(cfg)
    extras = {}
    if cfg.autoattack:
        from .autoattack import autoattack_batch_fn
        extras["autoattack"] = autoattack_batch_fn(cfg, grid)
    if cfg.certify:
        from .certify import certify_batch_fn
        extras["certify"] = certify_batch_fn(cfg)

    if state_file and world_size > 1:
        state_file = f"{state_file}.rank{rank}"
    fp = _fingerprint(cfg_dict, rank, world_size, model)
    st = _load_state(state_file, fp) or _State(list(cfg.attacks), grid, list(cfg.noise_sigmas))

    total = None
    if cfg.max_samples is not None:
        total = math.ceil(cfg.max_samples / cfg.batch_size)
    elif hasattr(loader, "__len__") and hasattr(loader, "batch_size") and getattr(loader, "dataset", None) is not None:
        try:
            total = math.ceil(len(loader.dataset) / cfg.batch_size)
        except TypeError:
            total = None
    bar = tqdm(total=total, desc="eval", unit="batch", disable=not progress or rank != 0, leave=False)
    t0 = time.perf_counter()
    stream = [0, 0, 0.0]     # samples, label sum, pixel sum: every rank must read the same stream
    for b, first, x, y in rebatch(loader, cfg.batch_size, cfg.max_samples):
        bar.update(1)
        if world_size > 1:
            stream[0] += int(x.shape[0])
            stream[1] += int(y.sum())
            stream[2] += float(x.double().sum())
        if b % world_size != rank or b < st.next_batch:
            continue
        x = x.to(device=device, dtype=torch.float32)
        y = y.to(device=device, dtype=torch.long)
        _eval_batch(model, x, y, b, first, cfg, grid, st, extras)
        st.next_batch = b + 1
        if state_file:
            st.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            _save_state(state_file, fp, st)
    bar.close()
    st.seconds += time.perf_counter() - t0
    states = _gather_states(st, world_size, stream)
    if state_file and os.path.exists(state_file):
        os.remove(state_file)          # finished: nothing left to resume
    return _build_report(states, cfg, cfg_dict, grid, world_size)


def _gather_states(st: _State, world_size: int, stream) -> List[_State]:
    if world_size <= 1:
        return [st]
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise UserError(f"evaluate_model: world_size={world_size} needs torch.distributed initialised")
    out = [None] * world_size
    dist.all_gather_object(out, {"state": st.to_json(), "stream": stream})
    if any(o["stream"] != out[0]["stream"] for o in out):
        raise UserError("evaluate_model: the ranks read different evaluation streams; pass every rank the "
                        "whole, unsharded loader (e.g. eval_loader(cfg.data, 'test') without rank/world_size)"
                        " - evaluate_model shards it itself")
    return [_State.from_json(o["state"]) for o in out]


# ---------------------------------------------------------------- the report
def _lower_median(values: List[float]) -> Optional[float]:
    if not values:
        return None
    v = sorted(values)
    m = v[(len(v) - 1) // 2]
    return None if math.isinf(m) else m


def _critical(flips: List[int], grid: List[float]) -> Dict[str, Any]:
    vals = [grid[f] if f >= 0 else math.inf for f in flips]
    never = sum(1 for v in vals if math.isinf(v))
    return {"median": _lower_median(vals), "robust_beyond_grid": never / max(len(vals), 1),
            "hist": {str(e): sum(1 for v in vals if v == e) for e in grid}}


def _build_report(states: List[_State], cfg, cfg_dict, grid, world_size) -> Dict[str, Any]:
    n = sum(s.n for s in states)
    if n == 0:
        raise UserError("evaluate_model: the loader yielded no samples")
    samples = sorted((r for s in states for r in s.samples), key=lambda r: r[0])
    acc = lambda c: c / n  # noqa: E731
    report: Dict[str, Any] = {"n": n, "clean_acc": acc(sum(s.clean for s in states)), "attacks": {}}
    curves = {}
    for name in cfg.attacks:
        counts = [sum(s.correct[name][j] for s in states) for j in range(len(grid))]
        accs = [acc(c) for c in counts]
        report["attacks"][name] = {"eps": grid, "acc": accs, "auc": normalised_auc(grid, accs),
                                   "critical_eps": _critical([r[3][name] for r in samples], grid)}
        curves[name] = accs
    if cfg.autoattack:
        accs = [acc(sum(s.aa[j] for s in states)) for j in range(len(grid))]
        report["autoattack"] = {"eps": grid, "acc": accs, "auc": normalised_auc(grid, accs),
                                "steps": int(getattr(cfg, "autoattack_steps", 100)),
                                "critical_eps": _critical([r[3]["autoattack"] for r in samples], grid)}
        curves["autoattack"] = accs
    worst = [acc(sum(s.worst[j] for s in states)) for j in range(len(grid))]
    report["worst_case"] = {"eps": grid, "acc": worst, "auc": normalised_auc(grid, worst),
                            "attacks": list(curves)}
    report["robustness_score"] = report["worst_case"]["auc"]
    report["strongest_attack"] = min(curves, key=lambda a: normalised_auc(grid, curves[a])) if curves else None
    crit = _critical([r[4] for r in samples], grid)
    report["critical_eps"] = {**crit, "values": [grid[r[4]] if r[4] >= 0 else None for r in samples]}
    if cfg.noise_sigmas:
        report["noise"] = {"sigma": [float(s) for s in cfg.noise_sigmas],
                           "acc": [acc(sum(s.noise[k] for s in states)) for k in range(len(cfg.noise_sigmas))]}
    if cfg.certify:
        from .certify import summarise
        recs = sorted((r for s in states for r in s.certify), key=lambda r: r[0])
        report["certify"] = summarise(recs, cfg.certify)
    report["config"] = cfg_dict
    report["world_size"] = world_size
    report["seconds"] = round(max(s.seconds for s in states), 3)
    return report
