"""Cross-check of our attacks against torchattacks (a test/benchmark-only dependency).

``agreement(model, x, y)`` runs each of our attacks and torchattacks' counterpart with the
same hyper-parameters on the same model and inputs and returns our robust accuracy,
theirs and the difference. Used by tests/attacks/test_torchattacks_agreement.py and
bench/attack_speed.py (the table in docs/benchmarks.md).

DeepFool is compared on inputs mapped into [0.2, 0.8]: torchattacks 3.5 clips to [0, 1]
after every DeepFool step, which stalls it on digits (most pixels are exactly 0) while
ours accumulates the unclipped step as in the paper; away from the box both are the
same algorithm, and there we also compare the median L2 norm of the perturbation.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

import torch

from . import create_attack


def cases(eps_linf: float = 0.1, eps_l2: float = 0.5, steps: int = 10, apgd_steps: int = 10) -> Dict[str, tuple]:
    """name -> (our attack, a function model -> torchattacks attack, input transform or None)."""
    import torchattacks as ta
    a_inf, a_l2 = eps_linf / 4, eps_l2 / 4
    return {
        "fgsm": (create_attack("fgsm", eps=eps_linf), lambda m: ta.FGSM(m, eps=eps_linf), None),
        "pgd_linf": (create_attack("pgd", eps=eps_linf, alpha=a_inf, steps=steps),
                     lambda m: ta.PGD(m, eps=eps_linf, alpha=a_inf, steps=steps), None),
        "pgd_linf_no_rs": (create_attack("pgd", eps=eps_linf, alpha=a_inf, steps=steps, random_start=False),
                           lambda m: ta.PGD(m, eps=eps_linf, alpha=a_inf, steps=steps, random_start=False), None),
        "pgd_l2": (create_attack("pgd", eps=eps_l2, alpha=a_l2, steps=steps, norm="l2"),
                   lambda m: ta.PGDL2(m, eps=eps_l2, alpha=a_l2, steps=steps), None),
        "bim": (create_attack("bim", eps=eps_linf, alpha=eps_linf / steps, steps=steps),
                lambda m: ta.BIM(m, eps=eps_linf, alpha=eps_linf / steps, steps=steps), None),
        "mim": (create_attack("mim", eps=eps_linf, alpha=eps_linf / steps, steps=steps),
                lambda m: ta.MIFGSM(m, eps=eps_linf, alpha=eps_linf / steps, steps=steps), None),
        "apgd_ce": (create_attack("apgd_ce", eps=eps_linf, steps=apgd_steps),
                    lambda m: ta.APGD(m, eps=eps_linf, steps=apgd_steps, loss="ce"), None),
        "apgd_dlr": (create_attack("apgd_dlr", eps=eps_linf, steps=apgd_steps),
                     lambda m: ta.APGD(m, eps=eps_linf, steps=apgd_steps, loss="dlr"), None),
        "apgd_ce_l2": (create_attack("apgd_ce", eps=eps_l2, steps=apgd_steps, norm="l2"),
                       lambda m: ta.APGD(m, norm="L2", eps=eps_l2, steps=apgd_steps, loss="ce"), None),
        "apgd_t": (create_attack("apgd_t", eps=eps_linf, steps=apgd_steps),
                   lambda m: ta.APGDT(m, eps=eps_linf, steps=apgd_steps, n_classes=10), None),
        "deepfool": (create_attack("deepfool", eps=float("inf"), norm="l2", steps=50, overshoot=0.02),
                     lambda m: ta.DeepFool(m, steps=50, overshoot=0.02), lambda x: 0.2 + 0.6 * x),
    }


@torch.no_grad()
def _acc(model, x, y):
    return (model(x).argmax(1) == y).float().mean().item()


def agreement(model, x, y, names: Optional[List[str]] = None, seed: int = 0, max_deepfool: int = 100,
              max_apgd_t: Optional[int] = None, **case_kw) -> List[dict]:
    """One row per attack: ours, theirs (robust accuracy), diff = ours - theirs, seconds each.
    DeepFool (torchattacks' is per-sample and slow) and APGD-T can run on fewer samples."""
    model.eval()
    rows = []
    for name, (ours, make_theirs, tf) in cases(**case_kw).items():
        if names is not None and name not in names:
            continue
        xi, yi = (x, y) if tf is None else (tf(x[:max_deepfool]), y[:max_deepfool])
        if name == "apgd_t" and max_apgd_t is not None:
            xi, yi = x[:max_apgd_t], y[:max_apgd_t]
        t = time.perf_counter()
        xo = ours(model, xi, yi, torch.Generator().manual_seed(seed))
        t_ours = time.perf_counter() - t
        torch.manual_seed(seed)
        theirs = make_theirs(model)
        t = time.perf_counter()
        xt = theirs(xi, yi)
        t_theirs = time.perf_counter() - t
        row = {"attack": name, "n": int(xi.shape[0]), "clean": _acc(model, xi, yi), "ours": _acc(model, xo, yi),
               "theirs": _acc(model, xt, yi), "t_ours": t_ours, "t_theirs": t_theirs}
        row["diff"] = row["ours"] - row["theirs"]
        if name == "deepfool":
            row["median_l2_ours"] = (xo - xi).flatten(1).norm(dim=1).median().item()
            row["median_l2_theirs"] = (xt - xi).flatten(1).norm(dim=1).median().item()
        rows.append(row)
    return rows
