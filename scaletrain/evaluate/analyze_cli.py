"""`scaletrain analyze RUN_DIR`: sensitivity analysis of a trained run (evaluate/sensitivity.py).

Writes `<run>/sensitivity.json`, adds a "Sensitivity analysis" section to the run's report
(report.json key `sensitivity`, rendered in report.md), and logs the scalars to W&B
(`sensitivity/...`, a run of job type `analyze` in the run's W&B project).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from ..errors import UserError

EPILOG = """\
what it measures (on the first --max-samples test samples, model in eval mode):
  input gradient     mean ||grad_x CE||_2 and ||.||_1 (L1: loss increase per unit of L-inf perturbation)
  local Lipschitz    max over ||x'-x||_inf <= eps of ||f(x')-f(x)||_1 / ||x'-x||_inf (logits), by
                     signed-gradient ascent (Yang et al. 2020); mean and max over samples
  weight noise       every weight tensor W -> W + r*||W||*u/||u||, u Gaussian, for each r in
                     --weight-rel: relative logit change, changed predictions, accuracy
  integration        (node_cnn, sde_cnn, resnet_ode) clean and PGD accuracy and ODE-function
                     evaluations as the number of steps / step size / tolerance varies around
                     the trained setting (steps x1/4..x4; step size x0.5..x2; rtol 1e-1..1e-4)

examples:
  scaletrain analyze runs/node_digits
  scaletrain analyze runs/sde_digits --eps 0.1 --max-samples 128 eval.eot_samples=8
"""


def _parser():
    p = argparse.ArgumentParser(prog="scaletrain analyze", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Sensitivity of a trained run to its inputs, weights and (ODE/SDE "
                                            "models) discretisation; results go into the run's report and W&B.")
    p.add_argument("args", nargs="+", metavar="RUN_DIR|key=value", help="a run folder, then config overrides")
    p.add_argument("--eps", type=float, default=None,
                   help="L-inf radius of the Lipschitz estimate and of the PGD attack in the integration sweep "
                        "(default: the middle positive epsilon of eval.eps)")
    p.add_argument("--max-samples", type=int, default=256, help="test samples analysed (default 256)")
    p.add_argument("--weight-rel", default="0.01,0.05,0.1", help="relative weight-perturbation sizes")
    p.add_argument("--trials", type=int, default=3, help="weight-perturbation draws per size (default 3)")
    p.add_argument("--lipschitz-steps", type=int, default=10, help="ascent steps of the Lipschitz estimate")
    p.add_argument("--pgd-steps", type=int, default=10, help="PGD steps of the integration sweep (default 10)")
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    return p


def default_eps(eps_grid) -> float:
    pos = sorted(e for e in eps_grid if e > 0)
    return float(pos[len(pos) // 2]) if pos else 0.1


def markdown(s: Dict[str, Any]) -> List[str]:
    """The report section."""
    lines = ["## Sensitivity analysis", "",
             f"- samples: {s['n']}, clean accuracy {100 * s['clean_acc']:.1f}%",
             f"- input gradient (CE): mean L2 norm {s['grad_l2_mean']:.4g}, mean L1 norm {s['grad_l1_mean']:.4g}",
             f"- local Lipschitz estimate (L-inf ball eps={s['lipschitz_eps']:g}, logits, L1/L-inf): "
             f"mean {s['lipschitz_mean']:.4g}, max {s['lipschitz_max']:.4g}", "",
             f"### Random weight perturbation ({s['weight_perturbation']['trials']} draws per size)", "",
             "| relative size | logit change (rel.) | changed predictions (%) | accuracy (%) |",
             "|---:|---:|---:|---:|"]
    for r in s["weight_perturbation"]["rows"]:
        lines.append(f"| {r['rel_size']:g} | {r['output_change']:.4f} | {100 * r['prediction_flips']:.1f} | "
                     f"{100 * r['acc']:.1f} |")
    lines.append("")
    if "integration" in s:
        it = s["integration"]
        keys = [k for k in ("steps", "step_size", "rtol") if k in it["rows"][0]]
        trained = ", ".join(f"{k}={v}" for k, v in it["trained"].items())
        lines += [f"### Discretisation (trained: {trained}; PGD-{it['pgd_steps']} at eps={it['eps']:g}"
                  + (f", EOT {it['eot']}" if it["eot"] > 1 else "") + ")", "",
                  "| " + " | ".join(keys) + " | ODE evaluations | clean (%) | robust (%) |",
                  "|" + "---:|" * (len(keys) + 3)]
        for r in it["rows"]:
            nfe = f"{r['nfe']:.0f}" if r.get("nfe") is not None else "-"
            rob = f"{100 * r['robust_acc']:.1f}" if "robust_acc" in r else "-"
            lines.append("| " + " | ".join(f"{r[k]:g}" for k in keys) + f" | {nfe} | {100 * r['clean_acc']:.1f} | "
                         f"{rob} |")
        lines.append("")
    return lines


def scalars(s: Dict[str, Any], prefix: str = "sensitivity") -> Dict[str, float]:
    out = {f"{prefix}/{k}": float(s[k]) for k in ("clean_acc", "grad_l2_mean", "grad_l1_mean", "lipschitz_mean",
                                                  "lipschitz_max")}
    for r in s["weight_perturbation"]["rows"]:
        for k in ("output_change", "prediction_flips", "acc"):
            out[f"{prefix}/weight_noise/{k}@{r['rel_size']:g}"] = float(r[k])
    for r in s.get("integration", {}).get("rows", []):
        tag = ",".join(f"{k}-{r[k]:g}" for k in ("steps", "step_size", "rtol") if k in r)
        for k in ("clean_acc", "robust_acc"):
            if k in r:
                out[f"{prefix}/integration/{k}@{tag}"] = float(r[k])
    return out


def analyze_run(run: str, overrides=(), *, eps: Optional[float] = None, max_samples: int = 256,
                weight_rel=(0.01, 0.05, 0.1), trials: int = 3, lipschitz_steps: int = 10, pgd_steps: int = 10,
                wandb: bool = True) -> Dict[str, Any]:
    from ..data import eval_loader
    from ..models import model_from_state
    from ..run import load_run
    from .report import write_report
    from .sensitivity import analyze_model

    cfg, state, run_dir = load_run(run, overrides)
    model = model_from_state(cfg.model, state, source=str(run))
    eps = float(eps) if eps is not None else default_eps(cfg.eval.eps)
    loader = eval_loader(cfg.data, "test", batch_size=min(int(cfg.eval.batch_size), 256))
    res = analyze_model(model, loader, eps=eps, max_samples=max_samples, lipschitz_steps=lipschitz_steps,
                        weight_rel=weight_rel, trials=trials, pgd_steps=pgd_steps,
                        eot=int(getattr(cfg.eval, "eot_samples", 1)), seed=int(cfg.eval.seed))
    with open(os.path.join(run_dir, "sensitivity.json"), "w") as f:
        json.dump(res, f, indent=1)
    report_file = os.path.join(run_dir, "report.json")
    if os.path.exists(report_file):  # the section joins the robustness report
        with open(report_file) as f:
            report = json.load(f)
        report["sensitivity"] = res
        write_report(report, str(run_dir))
    else:
        with open(os.path.join(run_dir, "report.md"), "a") as f:
            f.write("\n".join(markdown(res)) + "\n")
    if wandb and cfg.tracking.wandb:
        from ..config import to_dict
        from ..track import Tracker
        tracker = Tracker(cfg.tracking, str(run_dir), to_dict(cfg), name=f"{run_dir.name}-analyze",
                          job_type="analyze")
        tracker.log(scalars(res))
        for k, v in scalars(res).items():
            if tracker.run is not None:
                tracker.run.summary[k] = v
        tracker.finish()
    print("\n".join(markdown(res)), flush=True)
    return res


def analyze_main(argv: Optional[List[str]] = None) -> int:
    ns = _parser().parse_intermixed_args(argv)
    try:
        paths = [a for a in ns.args if "=" not in a]
        overrides = [a for a in ns.args if "=" in a]
        if len(paths) != 1:
            raise UserError(f"give exactly one run folder, got {len(paths)}: {' '.join(paths) or 'none'}")
        try:
            rel = [float(v) for v in ns.weight_rel.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--weight-rel: comma-separated numbers, got '{ns.weight_rel}'") from None
        if any(r < 0 for r in rel) or ns.trials < 1 or ns.max_samples < 1 or (ns.eps is not None and ns.eps <= 0):
            raise UserError("--weight-rel >= 0, --trials >= 1, --max-samples >= 1 and --eps > 0 are required")
        analyze_run(paths[0], overrides, eps=ns.eps, max_samples=ns.max_samples, weight_rel=rel, trials=ns.trials,
                    lipschitz_steps=ns.lipschitz_steps, pgd_steps=ns.pgd_steps, wandb=not ns.no_wandb)
    except UserError as e:
        print(f"scaletrain analyze: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(analyze_main())
