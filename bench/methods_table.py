"""The methods table on digits: every robust-training method through the shipped CLI, one table.

Each row is one `scaletrain train` run (a subprocess, the CLI users run) of the default digits
recipe (digits_cnn, Adam, cosine schedule, batch 64) with the row's method, then the run's own
final evaluation on the fixed 20% test split (359 images): clean accuracy, PGD-20 at eps 0.1
and 0.2 (alpha 2.5 eps / 20, random start, worst iterate kept), the AutoAttack-style preset
(APGD-CE + APGD-T) at the same eps, the robustness score (normalised area under the worst-case
accuracy curve over eps in [0, 0.2]) and the training wall time. Randomised models (PNI) are
attacked with expectation-over-transformation gradients (`eval.eot_samples`).

The table is written into docs/methods.md between the markers
`<!-- methods-table:begin -->` and `<!-- methods-table:end -->` (use --no-docs to only print it),
with the machine load (`uptime`) before and after each run: the machine may be shared, and
training times move with the load, the accuracies do not.

    python bench/methods_table.py [--epochs 10] [--aa-steps 25] [--only standard,cutmix] [--no-docs]

Rows are saved in bench/out/methods_table.json as they finish; a re-run reuses them (same
epochs and AutoAttack steps), so an interrupted table continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOC = os.path.join(ROOT, "docs", "methods.md")
BEGIN, END = "<!-- methods-table:begin -->", "<!-- methods-table:end -->"

ADV = ["method.attack.eps=0.25", "method.attack.steps=5"]          # the default job's training attack
# (row label, method overrides, extra eval overrides)
ROWS = [
    ("standard", ["method.name=standard"], []),
    ("PGD-AT (PGD-5)", ["method.name=pgd_at", *ADV], []),
    ("fast AT (FGSM-RS) + guard", ["method.name=fast_at", "method.attack.name=fgsm_rs", "method.attack.eps=0.25",
                                   "method.guard.every=20"], []),
    ("Free AT (m=4)", ["method.name=free_at", "method.attack.eps=0.25", "method.attack.steps=1",
                       "method.replays=4"], []),
    ("TRADES (beta 6)", ["method.name=trades", *ADV, "method.beta=6.0"], []),
    ("MART (beta 6)", ["method.name=mart", *ADV, "method.beta=6.0"], []),
    ("Gaussian noise (sigma 0.25)", ["method.name=standard",
                                     "method.extra=[{name: gaussian_noise, kwargs: {sigma: 0.25}}]"], []),
    ("PNI-W layerwise + PGD-AT", ["method.name=pgd_at", *ADV, "model.pni=layer", "method.extra=[{name: pni}]"],
     ["eval.eot_samples=4"]),
    ("CutMix", ["method.name=standard", "method.extra=[{name: cutmix, kwargs: {alpha: 1.0}}]"], []),
    ("TRADES + CutMix", ["method.name=trades", *ADV, "method.beta=6.0",
                         "method.extra=[{name: cutmix, kwargs: {alpha: 1.0}}]"], []),
]
KEYS = {"standard": 0, "pgd_at": 1, "fast_at": 2, "free_at": 3, "trades": 4, "mart": 5, "gaussian_noise": 6,
        "pni": 7, "cutmix": 8, "trades_cutmix": 9}
EVAL = ["eval.attacks=[pgd]", "eval.eps=[0.1,0.2]", "eval.pgd_steps=20", "eval.autoattack=true"]


def load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def run_row(label: str, overrides: List[str], evals: List[str], epochs: int, out_dir: str, threads: int,
            aa_steps: int) -> Dict:
    name = "mt-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    cmd = [sys.executable, "-m", "scaletrain.cli", "train", f"name={name}", f"out_dir={out_dir}",
           f"train.epochs={epochs}", "train.progress=false", "tracking.wandb=false",
           f"engine.cpu_threads={threads}", f"eval.autoattack_steps={aa_steps}", *EVAL, *overrides, *evals]
    load0, t0 = load(), time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        tail = (p.stdout + p.stderr).strip().splitlines()[-5:]
        print(f"  FAILED ({p.returncode}): {' | '.join(tail)}", flush=True)
        return {"label": label, "error": " | ".join(tail), "cmd": cmd}
    m = re.search(r"^outputs: (.+)$", p.stdout, re.M)
    run_dir = m.group(1).strip() if m else os.path.join(out_dir, name)
    rep = json.load(open(os.path.join(ROOT, run_dir, "report.json")))
    pgd, aa = rep["attacks"]["pgd"], rep.get("autoattack", {})
    at = lambda d, e: d["acc"][d["eps"].index(e)] if d and e in d["eps"] else None  # noqa: E731
    return {"label": label, "clean": rep["clean_acc"], "pgd_0.1": at(pgd, 0.1), "pgd_0.2": at(pgd, 0.2),
            "aa_0.1": at(aa, 0.1), "aa_0.2": at(aa, 0.2), "score": rep["robustness_score"],
            "train_s": rep["train"]["seconds"], "wall_s": round(wall, 1), "load": f"{load0} -> {load()}",
            "run_dir": run_dir, "cmd": " ".join(cmd[2:])}


def pct(v: Optional[float]) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def table(rows: List[Dict], epochs: int, aa_steps: int) -> str:
    lines = [f"Generated by `python bench/methods_table.py --epochs {epochs}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
             f" ({os.cpu_count()} CPU cores, 1 torch thread per run, DeepSpeed ZeRO-0, 1 rank). "
             f"{epochs} epochs each on sklearn digits; test split 359 images; PGD-20 and the AutoAttack-style "
             f"preset ({aa_steps} iterations per APGD run; AutoAttack's standard version uses 100, fewer here to "
             "fit the time budget) at eps 0.1 / 0.2; PNI is attacked with EOT gradients over 4 forwards; score = normalised area under "
             "the worst-case accuracy curve over eps in [0, 0.2]. Train time is wall-clock training only "
             "(the machine's 1-minute load average before -> after each run is in the last column: "
             "times are comparable only at similar load).", "",
             "| method | clean | PGD-20 @0.1 | PGD-20 @0.2 | AA @0.1 | AA @0.2 | score | train time | load |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        lines.append(f"| {r['label']} | {pct(r['clean'])} | {pct(r['pgd_0.1'])} | {pct(r['pgd_0.2'])} | "
                     f"{pct(r['aa_0.1'])} | {pct(r['aa_0.2'])} | {r['score']:.3f} | {r['train_s']:.0f} s | "
                     f"{r['load']} |")
    lines += ["", "Overrides of each row (on top of the default job; `scaletrain train <these>` reproduces it):", ""]
    for r in rows:
        ov = next(o + e for lab, o, e in ROWS if lab == r["label"])
        lines.append(f"- {r['label']}: `{' '.join(ov)}`")
    return "\n".join(lines) + "\n"


def write_doc(text: str) -> None:
    doc = open(DOC).read()
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n## The methods table (digits)\n\n" + block + "\n"
    with open(DOC + ".tmp", "w") as f:
        f.write(doc)
    os.replace(DOC + ".tmp", DOC)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(KEYS)}")
    ap.add_argument("--out-dir", default="runs/methods_table")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--aa-steps", type=int, default=25)
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--json", default="bench/out/methods_table.json",
                    help="rows are written here after every run; rows already in it (same label, epochs and "
                         "AutoAttack steps, no error) are reused, so an interrupted table continues")
    a = ap.parse_args(argv)
    picked = [ROWS[KEYS[k]] for k in a.only.split(",") if k] if a.only else ROWS
    t0 = time.time()
    done = {}
    if a.json and os.path.exists(a.json):
        done = {r["label"]: r for r in json.load(open(a.json))
                if "error" not in r and r.get("epochs") == a.epochs and r.get("aa_steps") == a.aa_steps}
    rows = []
    for label, ov, ev in picked:
        if label in done:
            rows.append(done[label])
            print(f"{label}: reusing the row in {a.json}", flush=True)
            continue
        print(f"{label} ... (load {load()})", flush=True)
        rows.append(dict(run_row(label, ov, ev, a.epochs, a.out_dir, a.threads, a.aa_steps),
                         epochs=a.epochs, aa_steps=a.aa_steps))
        if a.json:
            os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
            keep = {r["label"]: r for r in (json.load(open(a.json)) if os.path.exists(a.json) else [])}
            keep[label] = rows[-1]
            with open(a.json, "w") as f:
                json.dump(list(keep.values()), f, indent=1)
        r = rows[-1]
        if "error" not in r:
            print(f"  clean {pct(r['clean'])}  pgd@0.2 {pct(r['pgd_0.2'])}  aa@0.2 {pct(r['aa_0.2'])}  "
                  f"score {r['score']:.3f}  train {r['train_s']:.0f}s  wall {r['wall_s']:.0f}s", flush=True)
    text = table(rows, a.epochs, a.aa_steps)
    print(text)
    print(f"total {time.time() - t0:.0f} s")
    if not a.no_docs and not a.only:
        write_doc(text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
