"""Report outputs: ``report.json``, ``report.md`` (Markdown tables), ``robustness.png``,
and ``format_table`` for the terminal. Works for single-model and ensemble reports."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _f(v, nd=3) -> str:
    return "-" if v is None else f"{v:.{nd}g}"


def _curves(report) -> List[tuple]:
    """(label, curve dict) for every accuracy-vs-eps curve of a single-model report."""
    out = [(name, c) for name, c in report.get("attacks", {}).items()]
    if "autoattack" in report:
        out.append(("autoattack", report["autoattack"]))
    if "worst_case" in report:
        out.append(("worst case", report["worst_case"]))
    return out


def _md_single(report: Dict[str, Any], title: str) -> List[str]:
    lines = [f"## {title}", "",
             f"- samples: {report['n']}",
             f"- clean accuracy: {_pct(report['clean_acc'])}%",
             f"- robustness score (normalised AUC of the per-sample worst case over "
             f"{', '.join(report['worst_case']['attacks'])}): {report['robustness_score']:.4f}",
             f"- strongest single attack: {report.get('strongest_attack')}",
             f"- median critical epsilon (worst case): {_f(report['critical_eps']['median'])} "
             f"({_pct(report['critical_eps']['robust_beyond_grid'])}% robust at every grid epsilon)", ""]
    curves = _curves(report)
    if curves:
        grid = curves[0][1]["eps"]
        lines += ["### Accuracy (%) under attack", "",
                  "| attack | " + " | ".join(f"eps={e:g}" for e in grid) + " | AUC | median crit. eps |",
                  "|---|" + "---:|" * (len(grid) + 2)]
        for label, c in curves:
            med = c.get("critical_eps", report["critical_eps"] if label == "worst case" else {}).get("median")
            lines.append(f"| {label} | " + " | ".join(_pct(a) for a in c["acc"]) + f" | {c['auc']:.4f} | {_f(med)} |")
        lines.append("")
    if "noise" in report:
        nz = report["noise"]
        lines += ["### Accuracy (%) under Gaussian noise", "",
                  "| sigma | " + " | ".join(f"{s:g}" for s in nz["sigma"]) + " |",
                  "|---|" + "---:|" * len(nz["sigma"]),
                  "| accuracy | " + " | ".join(_pct(a) for a in nz["acc"]) + " |", ""]
    if "certify" in report:
        ce = report["certify"]
        lines += [f"### Randomized-smoothing certification (Cohen et al. 2019; sigma={ce['sigma']}, "
                  f"n0={ce['n0']}, n={ce['n']}, alpha={ce['alpha']}, {ce['samples']} samples)", "",
                  "| L2 radius | " + " | ".join(f"{r:g}" for r in ce["radii"]) + " |",
                  "|---|" + "---:|" * len(ce["radii"]),
                  "| certified accuracy (%) | " + " | ".join(_pct(a) for a in ce["certified_acc"]) + " |", "",
                  f"- abstentions: {ce['abstain']} ({_pct(ce['abstain_rate'])}%); smoothed clean accuracy "
                  f"{_pct(ce['smoothed_acc'])}%; median certified radius {_f(ce['median_radius'])}", ""]
    return lines


def _md_ensemble(report) -> List[str]:
    lines = ["## Ensemble summary", "", f"- members: {len(report['members'])}", "",
             "| metric | mean | std | ensemble |", "|---|---:|---:|---:|"]
    for k, m in report["mean"].items():
        lines.append(f"| {k} | {m:.4f} | {report['std'][k]:.4f} | "
                     f"{_f(report['ensemble_metrics'].get(k), 4)} |")
    lines.append("")
    lines += _md_single(report["ensemble"], "Ensemble (averaged logits)")
    for i, r in enumerate(report["members"]):
        lines += _md_single(r, f"Member {i}" + (f": {report['names'][i]}" if report.get("names") else ""))
    return lines


def _md_stages(stages) -> List[str]:
    """Per-stage table of a multi-stage run (engine/stages.py): what ran, time and compute."""
    lines = ["## Training stages", "",
             "| stage | method | attack | eps | steps | side | tokens | epochs | samples | time (s) | "
             "attack fwd+bwd | attack GFLOPs | total GFLOPs |", "|---|---|---|---:|" + "---:|" * 9]
    for s in stages:
        lines.append(f"| {s['name']} | {s['method']} | {s['attack']} | {s['attack_eps']:g} | {s['attack_steps']} | "
                     f"{s['image_size']} | {s['token_keep']:g} ({s['token_mask']}) | {s['epochs']} | {s['samples']} | "
                     f"{s['seconds']:.1f} | {s['attack_fwd_bwd_passes']} | {s['attack_gflops']:.4g} | "
                     f"{s['total_gflops']:.4g} |")
    return lines + [""]


def to_markdown(report: Dict[str, Any]) -> str:
    if "members" in report:
        body = _md_ensemble(report)
    else:
        body = _md_single(report, "Results")
    if report.get("stages"):
        body += _md_stages(report["stages"])
    if "sensitivity" in report:  # added by `scaletrain analyze`
        from .analyze_cli import markdown as sensitivity_markdown
        body += sensitivity_markdown(report["sensitivity"])
    return "\n".join(["# Robustness report", ""] + body)


def plot(report: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = report["ensemble"] if "members" in report else report
    panels = 1 + ("noise" in single) + ("certify" in single)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    ax = axes[0][0]
    for label, c in _curves(single):
        ax.plot(c["eps"], c["acc"], marker="o", label=f"{label} (AUC {c['auc']:.3f})",
                linestyle="--" if label == "worst case" else "-")
    if "members" in report:
        for i, r in enumerate(report["members"]):
            wc = r["worst_case"]
            ax.plot(wc["eps"], wc["acc"], color="grey", alpha=0.5, linewidth=1,
                    label="members (worst case)" if i == 0 else None)
    ax.set(xlabel="epsilon", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy under attack")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    k = 1
    if "noise" in single:
        ax = axes[0][k]
        k += 1
        ax.plot(single["noise"]["sigma"], single["noise"]["acc"], marker="o")
        ax.set(xlabel="Gaussian noise sigma", ylabel="accuracy", ylim=(0, 1.02), title="Gaussian noise")
        ax.grid(alpha=0.3)
    if "certify" in single:
        ax = axes[0][k]
        ce = single["certify"]
        ax.step(ce["radii"], ce["certified_acc"], where="post", marker="o")
        ax.set(xlabel="L2 radius", ylabel="certified accuracy", ylim=(0, 1.02),
               title=f"Certified (sigma={ce['sigma']})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(o):
    if isinstance(o, float) and (math.isinf(o) or math.isnan(o)):
        return None
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


def write_report(report: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    """Write report.json, report.md and robustness.png into ``out_dir``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md"),
             "png": os.path.join(out_dir, "robustness.png")}
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(report), f, indent=1)
    os.replace(tmp, paths["json"])
    with open(paths["md"], "w") as f:
        f.write(to_markdown(report) + "\n")
    plot(report, paths["png"])
    return paths


def format_table(report: Dict[str, Any]) -> str:
    """A short plain-text table for the terminal."""
    single = report["ensemble"] if "members" in report else report
    curves = _curves(single)
    grid = curves[0][1]["eps"] if curves else []
    head = f"{'attack':<12}" + "".join(f"{'eps=' + format(e, 'g'):>10}" for e in grid) + f"{'AUC':>8}"
    rows = [head, "-" * len(head)]
    for label, c in curves:
        rows.append(f"{label:<12}" + "".join(f"{100 * a:>9.1f}%" for a in c["acc"]) + f"{c['auc']:>8.3f}")
    tail = (f"n={single['n']}  clean={100 * single['clean_acc']:.1f}%  "
            f"robustness score={single['robustness_score']:.3f}  "
            f"median critical eps={_f(single['critical_eps']['median'])}")
    extra = []
    if "noise" in single:
        extra.append("noise: " + "  ".join(f"sigma={s:g}:{100 * a:.1f}%" for s, a in
                                           zip(single["noise"]["sigma"], single["noise"]["acc"])))
    if "certify" in single:
        ce = single["certify"]
        extra.append("certified: " + "  ".join(f"r={r:g}:{100 * a:.1f}%" for r, a in
                                               zip(ce["radii"], ce["certified_acc"]))
                     + f"  (abstain {ce['abstain']})")
    if "members" in report:
        extra.append(f"ensemble of {len(report['members'])}: member robustness score "
                     f"{report['mean']['robustness_score']:.3f} +/- {report['std']['robustness_score']:.3f}")
    for st in report.get("stages") or []:
        common = (f"side={st['image_size']} tokens={st['token_keep']:g} samples={st['samples']} "
                  f"time={st['seconds']:.1f}s")
        if not st["attack_fwd_bwd_passes"]:   # e.g. method standard: its config's attack section is unused
            extra.append(f"stage {st['name']}: {st['method']} (no attack) {common}")
            continue
        extra.append(f"stage {st['name']}: {st['method']}/{st['attack']} eps={st['attack_eps']:g} "
                     f"steps={st['attack_steps']} {common} attack fwd+bwd={st['attack_fwd_bwd_passes']} "
                     f"({st['attack_gflops']:.3g} GFLOPs)")
    return "\n".join([tail] + rows + extra)
