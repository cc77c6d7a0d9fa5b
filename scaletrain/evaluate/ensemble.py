"""Ensembles: each member's report, mean +/- std of every scalar metric over members,
and the robustness of the ensemble itself (the average of the members' logits,
attacked end to end as one model)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .suite import evaluate_model


class AveragedLogits(nn.Module):
    """The ensemble as one differentiable model: mean of the members' logits."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x):
        return torch.stack([m(x).float() for m in self.members]).mean(0)


def scalar_metrics(report: Dict[str, Any]) -> Dict[str, float]:
    """The report's scalar metrics under flat names (e.g. ``pgd/acc@0.1``, ``pgd/auc``)."""
    out = {"clean_acc": report["clean_acc"], "robustness_score": report["robustness_score"]}
    curves = dict(report["attacks"])
    if "autoattack" in report:
        curves["autoattack"] = report["autoattack"]
    curves["worst_case"] = report["worst_case"]
    for name, c in curves.items():
        for e, a in zip(c["eps"], c["acc"]):
            out[f"{name}/acc@{e:g}"] = a
        out[f"{name}/auc"] = c["auc"]
    med = report["critical_eps"]["median"]
    out["critical_eps/median"] = math.inf if med is None else med
    if "noise" in report:
        for s, a in zip(report["noise"]["sigma"], report["noise"]["acc"]):
            out[f"noise/acc@{s:g}"] = a
    if "certify" in report:
        for r, a in zip(report["certify"]["radii"], report["certify"]["certified_acc"]):
            out[f"certify/acc@{r:g}"] = a
    return out


def _mean_std(values: List[float]):
    n = len(values)
    if all(v == values[0] for v in values):
        return values[0], 0.0
    if any(math.isinf(v) for v in values):
        return math.inf, math.nan
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def evaluate_ensemble(models: Sequence[nn.Module], loader, cfg, *, names: Optional[List[str]] = None,
                      device="cpu", rank: int = 0, world_size: int = 1, progress: bool = True,
                      state_file: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate every member and the averaged-logits ensemble with the same ``cfg``.

    ``loader`` must be re-iterable (it is read once per member and once for the
    ensemble). ``std`` is the sample standard deviation over members (0 for one member).
    """
    if not models:
        from ..errors import UserError
        raise UserError("evaluate_ensemble: no models given")
    members = []
    for i, m in enumerate(models):
        sf = f"{state_file}.member{i}" if state_file else None
        members.append(evaluate_model(m, loader, cfg, device=device, rank=rank, world_size=world_size,
                                      progress=progress, state_file=sf))
    ens_model = AveragedLogits(models)
    ens = evaluate_model(ens_model, loader, cfg, device=device, rank=rank, world_size=world_size,
                         progress=progress, state_file=f"{state_file}.ensemble" if state_file else None)
    per = [scalar_metrics(r) for r in members]
    keys = [k for k in per[0] if all(k in p for p in per)]
    mean, std = {}, {}
    for k in keys:
        mean[k], std[k] = _mean_std([p[k] for p in per])
    return {"members": members, "names": list(names) if names else [f"member{i}" for i in range(len(models))],
            "mean": mean, "std": std, "ensemble": ens, "ensemble_metrics": scalar_metrics(ens),
            "n": ens["n"], "clean_acc": ens["clean_acc"], "robustness_score": ens["robustness_score"],
            "attacks": ens["attacks"]}
