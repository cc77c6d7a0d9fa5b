"""The sweep folder's results: tables, summary, plots, ensemble evaluations and the W&B summary run.

    <sweep>/results.csv, results.json   one row per trial: id, status, swept values, metrics, seconds, error
    <sweep>/summary.md                  trials ranked by the sweep metric, the best configuration, ensembles
    <sweep>/plots/<metric>_vs_<key>.png the sweep metric against each swept key
    <sweep>/plots/tradeoff.png          clean accuracy vs the robust metric, one point per trial
    <sweep>/ensembles/<config>/         report.json/.md/.png of each configuration's K-seed ensemble
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List

from ..config import to_dict
from ..evaluate.cli import evaluate_paths
from ..evaluate.ensemble import scalar_metrics
from ..track import Tracker

FIRST = ("clean_acc", "robustness_score", "val_acc", "val_pgd_acc", "epochs_done", "train_seconds")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def evaluate_ensembles(spec, trials, records) -> List[Dict[str, Any]]:
    """Each configuration whose K members all finished: members' metrics, mean +/- std, and the
    averaged-logit ensemble under attack (evaluate/ensemble.py, through `scaletrain eval`'s path)."""
    by_id = {r["id"]: r for r in records}
    out = []
    for cid in sorted({t.config_id for t in trials}):
        members = [t for t in trials if t.config_id == cid]
        if not all(by_id[t.id]["status"] == "ok" for t in members):
            continue
        folder = os.path.join(spec.folder, "ensembles", cid)
        path = os.path.join(folder, "report.json")
        if os.path.exists(path):
            with open(path) as f:
                report = json.load(f)
        else:
            report = evaluate_paths([by_id[t.id]["run_dir"] for t in members], out=folder, progress=False,
                                    wandb=False)
            if spec.base.tracking.wandb:
                tracking = spec.base.tracking.copy()
                tracking.group, tracking.job_type = spec.sweep.name, "ensemble"
                tr = Tracker(tracking, folder, {"members": [t.id for t in members], **members[0].params},
                             name=f"{spec.sweep.name}-{cid}-ensemble", job_type="ensemble")
                tr.log_report(report["ensemble"])          # the averaged-logit model's full report
                tr.log({f"members/{k}/{stat}": v for stat in ("mean", "std") for k, v in report[stat].items()
                        if _finite(v)})
                tr.finish()
        params = {k: v for k, v in members[0].params.items() if k != "seed"}
        out.append({"config_id": cid, "params": params, "members": [t.id for t in members],
                    "mean": report["mean"], "std": report["std"], "ensemble": report["ensemble_metrics"],
                    "folder": folder, "report": report})
    return out


def _rows(spec, records) -> List[Dict[str, Any]]:
    keys = list(spec.sweep.space) + (["seed"] if spec.sweep.ensemble.size > 1 else [])
    rows = []
    for r in records:
        row: Dict[str, Any] = {"id": r["id"], "status": r["status"]}
        row.update({k: r.get("params", {}).get(k) for k in keys})
        row.update(r.get("metrics") or {})
        row["seconds"] = r.get("seconds")
        row["error"] = r.get("error")
        row["run_dir"] = r.get("run_dir")
        rows.append(row)
    return rows


def best_row(rows, metric: str, mode: str):
    ok = [r for r in rows if r["status"] == "ok" and _finite(r.get(metric))]
    if not ok:
        return None
    return (max if mode == "max" else min)(ok, key=lambda r: r[metric])


def write_results(spec, records, ensembles) -> Dict[str, Any]:
    s, folder = spec.sweep, spec.folder
    rows = _rows(spec, records)
    keys = list(s.space) + (["seed"] if s.ensemble.size > 1 else [])
    metrics = sorted({k for r in rows for k in r} - set(keys) - {"id", "status", "seconds", "error", "run_dir"})
    head = [m for m in [s.metric, *FIRST] if m in metrics]
    columns = ["id", "status", *keys, *dict.fromkeys(head), *[m for m in metrics if m not in head],
               "seconds", "error"]
    with open(os.path.join(folder, "results.csv.tmp"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(os.path.join(folder, "results.csv.tmp"), os.path.join(folder, "results.csv"))
    best = best_row(rows, s.metric, s.mode)
    ens_rows = [{k: v for k, v in e.items() if k != "report"} for e in ensembles]
    summary = {"sweep": s.name, "folder": folder, "metric": s.metric, "mode": s.mode, "rows": rows, "best": best,
               "ensembles": ens_rows, "counts": {st: sum(r["status"] == st for r in rows)
                                                 for st in ("ok", "failed", "stopped", "missing")}}
    with open(os.path.join(folder, "results.json.tmp"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    os.replace(os.path.join(folder, "results.json.tmp"), os.path.join(folder, "results.json"))
    plots = _plots(folder, rows, keys, s.metric)
    with open(os.path.join(folder, "summary.md"), "w") as f:
        f.write(_markdown(spec, rows, best, ens_rows, plots))
    if spec.base.tracking.wandb:
        _wandb_summary(spec, rows, columns, best, ens_rows, plots)
    print(f"sweep {s.name}: {summary['counts']}; best {s.metric} = "
          f"{best[s.metric] if best else 'n/a'} ({best['id'] if best else '-'}); results in {folder}", flush=True)
    summary["ensembles"] = [dict(e) for e in ensembles]
    return summary


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _markdown(spec, rows, best, ens_rows, plots) -> str:
    s = spec.sweep
    keys = list(s.space)
    lines = [f"# Sweep `{s.name}`", "",
             f"{len(rows)} trials: " + ", ".join(f"{sum(r['status'] == st for r in rows)} {st}"
                                                 for st in ("ok", "stopped", "failed")) +
             f". Ranked by `{s.metric}` ({s.mode}).", ""]
    if best:
        lines += ["## Best configuration", "", f"Trial `{best['id']}` ({best['run_dir']}): "
                  f"`{s.metric}` = {_fmt(best[s.metric])}", "", "```yaml"]
        lines += [f"{k}: {json.dumps(best[k])}" for k in keys + (["seed"] if "seed" in best else [])]
        lines += ["```", ""]
    order = sorted(rows, key=lambda r: (r["status"] != "ok", -(r.get(s.metric) or 0) if s.mode == "max"
                                        else (r.get(s.metric) or 0)))
    cols = ["id", "status", *keys, s.metric, "clean_acc", "seconds"]
    lines += ["## Trials", "", "| " + " | ".join(cols) + " | error |", "|" + "---|" * (len(cols) + 1)]
    for r in order:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + f" | {_fmt(r.get('error'))[:80]} |")
    if ens_rows:
        lines += ["", "## Ensembles (mean +/- std over members; the averaged-logit ensemble)", "",
                  f"| config | {' | '.join(keys)} | members | {s.metric} mean +/- std | ensemble {s.metric} "
                  "| ensemble clean_acc |", "|" + "---|" * (len(keys) + 5)]
        for e in ens_rows:
            m = s.metric if s.metric in e["mean"] else "robustness_score"
            lines.append(f"| {e['config_id']} | " + " | ".join(_fmt(e['params'].get(k)) for k in keys) +
                         f" | {len(e['members'])} | {_fmt(e['mean'][m])} +/- {_fmt(e['std'][m])} | "
                         f"{_fmt(e['ensemble'].get(m))} | {_fmt(e['ensemble'].get('clean_acc'))} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in plots]
    return "\n".join(lines) + "\n"


def _plots(folder: str, rows, keys, metric: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = os.path.join(folder, "plots")
    os.makedirs(out_dir, exist_ok=True)
    ok = [r for r in rows if r["status"] in ("ok", "stopped") and _finite(r.get(metric))]
    paths = []
    safe = metric.replace("/", "_").replace("@", "_at_")
    for k in keys:
        vals = [r[k] for r in ok]
        if not ok:
            break
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        numeric = all(_finite(v) for v in vals)
        labels = sorted({str(v) for v in vals})
        xs = vals if numeric else [labels.index(str(v)) for v in vals]
        for st, marker in (("ok", "o"), ("stopped", "x")):
            pts = [(x, r[metric]) for x, r in zip(xs, ok) if r["status"] == st]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, label=st)
        if numeric and vals and min(vals) > 0 and max(vals) / min(vals) > 20:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(k)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = os.path.join(out_dir, f"{safe}_vs_{k.replace('/', '_')}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    robust = metric if metric != "clean_acc" else "robustness_score"
    pts = [(r["clean_acc"], r[robust], r["id"]) for r in rows
           if r["status"] == "ok" and _finite(r.get("clean_acc")) and _finite(r.get(robust))]
    if pts:
        fig, ax = plt.subplots(figsize=(4.5, 3.6))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts])
        for x, y, name in pts:
            ax.annotate(name, (x, y), fontsize=6)
        ax.set_xlabel("clean accuracy")
        ax.set_ylabel(robust)
        ax.set_title("accuracy / robustness trade-off")
        fig.tight_layout()
        p = os.path.join(out_dir, "tradeoff.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def _wandb_summary(spec, rows, columns, best, ens_rows, plots) -> None:
    """One W&B run (job_type summary) in the sweep's group: the results table, the trade-off
    scatter, the plots as images and the best configuration in its summary."""
    tracking = spec.base.tracking.copy()
    tracking.group, tracking.job_type = spec.sweep.name, "summary"
    tr = Tracker(tracking, spec.folder, {"sweep": to_dict(spec.sweep)}, name=f"{spec.sweep.name}-summary",
                 job_type="summary")
    if tr.run is None:
        return
    wandb = tr._wandb
    cols = [c for c in columns if c != "error"]
    table = wandb.Table(columns=cols, data=[[r.get(c) if not isinstance(r.get(c), (dict, list)) else
                                             json.dumps(r.get(c)) for c in cols] for r in rows])
    payload = {"sweep/results": table}
    robust = spec.sweep.metric if spec.sweep.metric != "clean_acc" else "robustness_score"
    if "clean_acc" in cols and robust in cols:
        payload["sweep/tradeoff"] = wandb.plot.scatter(table, "clean_acc", robust,
                                                       title="clean accuracy vs " + robust)
    for p in plots:
        payload[f"sweep/plots/{os.path.splitext(os.path.basename(p))[0]}"] = wandb.Image(p)
    if ens_rows:
        payload["sweep/ensembles"] = wandb.Table(
            columns=["config", "members", "metric", "mean", "std", "ensemble"],
            data=[[e["config_id"], len(e["members"]), k, e["mean"][k], e["std"][k], e["ensemble"].get(k)]
                  for e in ens_rows for k in ("clean_acc", "robustness_score") if k in e["mean"]])
    tr.run.log(payload)
    tr.run.summary["best_id"] = best["id"] if best else None
    if best:
        tr.run.summary[f"best/{spec.sweep.metric}"] = best[spec.sweep.metric]
    tr.finish()


__all__ = ["evaluate_ensembles", "write_results", "best_row", "scalar_metrics"]
