"""The evaluation suite's shortcuts give the numbers of the long way round:

* nested balls: a sample broken at a smaller epsilon is counted broken at larger ones without a new
  attack; per sample that is (independent attack at eps_j) AND (at every smaller eps), equal to the
  independent column wherever the independent curve is monotone;
* survivors only: a fooled sample leaves PGD's walk and later restarts, and the worst case over
  restarts is exactly that of running every sample through every step of every restart;
* threads: eval.cpu_threads=0 uses every core the process may run on.
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from scaletrain.attacks import create_attack
from scaletrain.attacks.base import random_start
from scaletrain.config.schema import EvalConfig
from scaletrain.evaluate import evaluate_model
from scaletrain.evaluate.suite import eval_threads
from scaletrain.evaluate.toy import digits_split
from scaletrain.rng import SampleRNG

GRID = [0.0, 0.03, 0.06, 0.1, 0.15, 0.2]


def cfg(**kw):
    base = dict(attacks=["pgd"], eps=GRID[1:], pgd_steps=5, restarts=2, batch_size=50)
    base.update(kw)
    return EvalConfig(**base)


def first_flip_counts(report, name):
    """Samples whose first independent failure is at each grid eps (from the per-sample records)."""
    return [report["attacks"][name]["critical_eps"]["hist"][str(e)] for e in GRID]


def test_nested_is_the_and_of_independent_columns(digits_model, digits_eval):
    """On a CNN whose independent curve need not be monotone: nested acc at eps_j = samples with no
    independent failure at any eps <= eps_j; never above the independent column."""
    nested = evaluate_model(digits_model, digits_eval, cfg(), progress=False)
    indep = evaluate_model(digits_model, digits_eval, cfg(nested=False), progress=False)
    n = nested["n"]
    flips = first_flip_counts(indep, "pgd")
    expect = [(n - sum(flips[: j + 1])) / n for j in range(len(GRID))]
    assert nested["attacks"]["pgd"]["acc"] == expect
    assert all(a <= b for a, b in zip(nested["attacks"]["pgd"]["acc"], indep["attacks"]["pgd"]["acc"]))
    assert nested["attacks"]["pgd"]["acc"][-1] < nested["clean_acc"] - 0.3     # the attack bites


def _linear_toy():
    torch.manual_seed(0)
    (x, y), (xt, yt) = digits_split()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, [(xt[i:i + 50], yt[i:i + 50]) for i in range(0, 150, 50)]


def test_nested_equals_independent_on_a_toy_model():
    """A linear model: PGD's independent curve is monotone there, so the shortcut changes no number
    (and no per-sample record) while attacking fewer samples."""
    model, data = _linear_toy()
    passes = []
    model.register_forward_hook(lambda m, i, o: passes.append(o.shape[0]))
    nested = evaluate_model(model, data, cfg(attacks=["pgd", "fgsm"]), progress=False)
    n_nested = sum(passes)
    passes.clear()
    indep = evaluate_model(model, data, cfg(attacks=["pgd", "fgsm"], nested=False), progress=False)
    n_indep = sum(passes)
    for name in ("pgd", "fgsm"):
        acc = indep["attacks"][name]["acc"]
        assert all(a >= b for a, b in zip(acc, acc[1:]))             # precondition: monotone
        assert nested["attacks"][name]["acc"] == acc
        assert nested["attacks"][name]["critical_eps"] == indep["attacks"][name]["critical_eps"]
    assert nested["worst_case"] == indep["worst_case"]
    assert 0.2 < nested["attacks"]["pgd"]["acc"][3] < nested["clean_acc"] - 0.2
    assert n_nested < n_indep


def _full_restarts(model, x, y, eps, steps, restarts, rng):
    """The long way: every sample through every step of every restart; fooled at any iterate."""
    alpha = 2.5 * eps / steps
    fooled = torch.zeros(x.shape[0], dtype=torch.bool)
    for r in range(restarts):
        xa = random_start(x, eps, "linf", rng.fork("restart", r))
        lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
        for _ in range(steps + 1):
            xa.requires_grad_(True)
            logits = model(xa)
            fooled |= logits.argmax(1).detach() != y
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)
            xa = torch.max(torch.min(xa.detach() + alpha * g.sign(), hi), lo)
    return fooled


def test_survivor_restarts_equal_full_restarts(digits_model, digits_eval):
    x = torch.cat([b[0] for b in digits_eval])
    y = torch.cat([b[1] for b in digits_eval])
    passes = []
    h = digits_model.register_forward_hook(lambda m, i, o: passes.append(o.shape[0]))
    try:
        for eps in (0.05, 0.1):
            rng = SampleRNG(3, torch.arange(x.shape[0]), "test")
            atk = create_attack("pgd", eps=eps, steps=6, restarts=4, track_best=True)
            passes.clear()
            with torch.no_grad():
                survived = digits_model(atk(digits_model, x, y, rng)).argmax(1) == y
            ours = sum(passes)
            with torch.no_grad():
                clean_wrong = digits_model(x).argmax(1) != y
            full = _full_restarts(digits_model, x, y, eps, 6, 4, rng) | clean_wrong
            assert torch.equal(~survived, full)
            assert 0 < int(full.sum()) < x.shape[0]
            assert ours < 4 * 7 * x.shape[0]              # fewer sample-passes than the long way
    finally:
        h.remove()


def test_eval_threads_default_uses_every_core():
    cores = len(os.sched_getaffinity(0))
    assert eval_threads(EvalConfig()) == cores
    assert eval_threads(EvalConfig(), world_size=2) == max(1, cores // 2)
    assert eval_threads(EvalConfig(cpu_threads=1)) == 1
    before = torch.get_num_threads()
    model, data = _linear_toy()
    evaluate_model(model, data, cfg(attacks=["fgsm"], cpu_threads=1), progress=False)
    assert torch.get_num_threads() == before                   # restored after the evaluation
