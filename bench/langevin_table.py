"""Langevin / constrained / Hebbian vs SGD: 5-seed ensembles, clean and PGD accuracy, robustness score.

    python bench/langevin_table.py                         # digits (configs/digits_<variant>.yaml)
    python bench/langevin_table.py --mnist                 # MNIST (configs/mnist_<variant>.yaml)
    python bench/langevin_table.py --seeds 0 1 --only sgd baoab --epochs 2   # a quick look
    python bench/langevin_table.py --write-docs            # replace the table in docs/methods.md
    python bench/langevin_table.py --mnist --epochs 1 --train-samples 9600 --eval-samples 500 --threads 2 --write-docs
                                                           # the MNIST table (section langevin-table-mnist)

Every run is the shipped CLI (`scaletrain train CONFIG seed=S ...`, DeepSpeed engine) followed
by its robustness report (PGD-20 at the two epsilons below). Seeds run in the outer loop and
variants in the inner one, so a shared machine's load spreads over all variants alike.
Mean +/- sample std over seeds; time = mean wall-clock seconds of one run (training + evaluation).
--epochs E sets the supervised epochs of every variant alike: the Hebbian variant trains
E + method.kwargs.hebbian_epochs epochs in all (its unsupervised phase comes first).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from omegaconf import OmegaConf

from scaletrain.methods.hebbian import DEFAULTS as HEBBIAN_DEFAULTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ["sgd", "sgld", "baoab", "circle", "orthogonal", "hebbian"]
# ablations: (config variant, overrides); T = 0 isolates the noise from the integrator's dynamics
ABLATIONS = {"sgld_T0": ("sgld", ["optim.langevin.temperature=0"]),
             "baoab_T0": ("baoab", ["optim.langevin.temperature=0"])}


def run_one(config, seed, name, out_dir, extra, reuse=True):
    """One CLI run; a finished run (report + wall time saved) with the same command is reused."""
    done = os.path.join(out_dir, name, "bench_run.json")
    cmd = [sys.executable, "-m", "scaletrain.cli", "train", config, f"seed={seed}", f"name={name}",
           f"out_dir={out_dir}", "tracking.wandb=false", "train.progress=false", *extra]
    if reuse and os.path.exists(done):
        with open(done) as f:
            saved = json.load(f)
        if saved["cmd"] == cmd[1:]:
            return saved["report"], saved["wall"]
    if os.path.exists(os.path.join(out_dir, name)):
        import shutil
        shutil.rmtree(os.path.join(out_dir, name))
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    with open(os.path.join(out_dir, name, "report.json")) as f:
        rep = json.load(f)
    with open(done, "w") as f:
        json.dump({"cmd": cmd[1:], "report": rep, "wall": wall}, f)
    return rep, wall


def metrics(rep, eps):
    pgd = rep["attacks"]["pgd"]
    acc = {round(e, 6): a for e, a in zip(pgd["eps"], pgd["acc"])}
    out = {"clean": rep["clean_acc"], "score": rep["robustness_score"]}
    for e in eps:
        out[f"pgd@{e:g}"] = acc[round(e, 6)]
    opt = rep.get("optimizer", {})
    if "max_constraint_violation" in opt:
        out["violation"] = opt["max_constraint_violation"]
    heb = rep.get("hebbian", {})
    if "unconverged_fraction" in heb:
        out["unconverged"] = heb["unconverged_fraction"]
    return out


def fmt(values, pct=True):
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * s:.1f}" if pct else f"{m:.3f} ± {s:.3f}"


def table(results, eps, seeds):
    ref = results.get("sgd") if len(seeds) > 1 else None  # paired by seed: same seeds, same order
    key = f"pgd@{eps[0]:g}"
    head = ["variant", "clean acc %"] + [f"PGD-20 ε={e:g} %" for e in eps] + ["robustness score"]
    head += [f"Δ PGD ε={eps[0]:g} vs sgd, paired by seed (points)"] if ref else []
    head += ["s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, runs in results.items():
        ms = [m for m, _ in runs]
        row = [v, fmt([m["clean"] for m in ms])] + [fmt([m[f"pgd@{e:g}"] for m in ms]) for e in eps]
        row += [fmt([m["score"] for m in ms], pct=False)]
        if ref:
            row += ["" if v == "sgd" else fmt([m[key] - r[key] for m, (r, _) in zip(ms, ref)])]
        row += [f"{statistics.mean(w for _, w in runs):.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    notes = []
    for v, runs in results.items():
        ms = [m for m, _ in runs]
        if any("violation" in m for m in ms):
            notes.append(f"{v}: largest constraint violation {max(m.get('violation', 0) for m in ms):.1e}")
        if any("unconverged" in m for m in ms):
            notes.append(f"{v}: unconverged first-layer filters {fmt([m['unconverged'] for m in ms])} %")
    return "\n".join(lines), notes


def epochs_override(config, epochs):
    """['train.epochs=N']: `epochs` supervised epochs, plus the Hebbian phase's for method hebbian."""
    if epochs is None:
        return []
    method = OmegaConf.load(config).get("method", {})
    extra = int(method.get("kwargs", {}).get("hebbian_epochs", HEBBIAN_DEFAULTS["hebbian_epochs"])) if method.get("name") == "hebbian" else 0
    return [f"train.epochs={epochs + extra}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", action="store_true", help="MNIST configs (configs/mnist_<variant>.yaml)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--only", nargs="+", default=VARIANTS, choices=VARIANTS + list(ABLATIONS))
    ap.add_argument("--marker", default=None, help="docs/methods.md section <!-- MARKER:start/end --> "
                    "(default langevin-table, with --mnist langevin-table-mnist)")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs of every config")
    ap.add_argument("--eps", type=float, nargs=2, default=None, help="the two PGD epsilons (default 0.1 0.2; "
                    "MNIST 0.1 0.3)")
    ap.add_argument("--eval-samples", type=int, default=None, help="evaluate the first N test samples "
                    "(eval.max_samples; default: the whole test split)")
    ap.add_argument("--train-samples", type=int, default=None, help="training samples per epoch: "
                    "data.mode=resampled data.epoch_size=N (default: one pass over the training split)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run, training and evaluation "
                    "(engine.cpu_threads, eval.cpu_threads; default: the configs' values)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "langevin"))
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="rerun runs already finished in --out")
    args = ap.parse_args()
    prefix = "mnist" if args.mnist else "digits"
    marker = args.marker or ("langevin-table-mnist" if args.mnist else "langevin-table")
    eps = args.eps or ([0.1, 0.3] if args.mnist else [0.1, 0.2])
    extra = ["eval.attacks=[pgd]", f"eval.eps=[0.0,{eps[0]},{eps[1]}]", "eval.pgd_steps=20"]
    if args.eval_samples is not None:
        extra.append(f"eval.max_samples={args.eval_samples}")
    if args.train_samples is not None:
        extra += ["data.mode=resampled", f"data.epoch_size={args.train_samples}"]
    if args.threads is not None:
        extra += [f"engine.cpu_threads={args.threads}", f"eval.cpu_threads={args.threads}"]
    load0 = os.getloadavg()
    t0 = time.time()
    results = {v: [] for v in args.only}
    for seed in args.seeds:
        for v in args.only:
            base, more = ABLATIONS.get(v, (v, []))
            cfg = os.path.join("configs", f"{prefix}_{base}.yaml")
            more = more + epochs_override(os.path.join(ROOT, cfg), args.epochs)
            rep, wall = run_one(cfg, seed, f"{prefix}-{v}-s{seed}", args.out, extra + more, not args.fresh)
            results[v].append((metrics(rep, eps), wall))
            m = results[v][-1][0]
            print(f"seed {seed} {v:<11} clean {m['clean']:.3f} " +
                  " ".join(f"pgd@{e:g} {m[f'pgd@{e:g}']:.3f}" for e in eps) +
                  f" score {m['score']:.3f}  {wall:.0f}s", flush=True)
    total = time.time() - t0
    tab, notes = table(results, eps, args.seeds)
    load1 = os.getloadavg()
    cmd = " ".join(["python bench/langevin_table.py"] + sys.argv[1:])
    header = (f"{prefix}, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), `{cmd}`: {total / 60:.1f} min in all "
              f"(the {sum(map(len, results.values()))} runs' own wall times add up to "
              f"{sum(w for r in results.values() for _, w in r) / 60:.1f} min; finished runs in --out are reused) "
              f"on a shared 2-core CPU (load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; "
              f"timings are noisy), {time.strftime('%Y-%m-%d', time.gmtime())}. Every run: "
              f"`{' '.join(extra)}`" + (f" (train.epochs = {args.epochs} + the Hebbian phase for hebbian)"
                                         if args.epochs is not None else "") + ".")
    text = header + "\n\n" + tab + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")
    print("\n" + text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{prefix}_table.md"), "w") as f:
        f.write(text + "\n")
    if args.write_docs:
        path = os.path.join(ROOT, "docs", "methods.md")
        doc = open(path).read()
        start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
        if start not in doc or end not in doc:
            sys.exit(f"docs/methods.md has no section {start} ... {end}: add the two markers first")
        a, b = doc.index(start) + len(start), doc.index(end)
        with open(path, "w") as f:
            f.write(doc[:a] + "\n" + text + "\n" + doc[b:])


if __name__ == "__main__":
    main()
