"""One-stage PGD-AT vs the AdvXL-style two-stage recipe on MNIST, at about half the compute.

    python bench/two_stage.py [--seeds 0 1 2] [--base-samples 16000] [--weak-samples 16000]
                              [--strong-samples 6000] [--eval-samples 400] [--aa-steps 20]
                              [--write docs/benchmarks.md]

Both arms are the shipped recipes (configs/mnist/pgd_at.yaml, configs/mnist/advxl_two_stage.yaml),
sized down by this script (lengths in samples, model width, evaluation subset) and run through the
CLI (`scaletrain train`), seed by seed, interleaved (one-stage, two-stage, next seed), so machine
load hits both arms alike. Per run: clean, PGD-20 and AutoAttack-style (APGD-CE + APGD-T) accuracy
at eps 0.3 on the first N test images, wall time of the whole training process (shard reading,
training and the final evaluation are timed separately: `train.seconds` is training only), and the
trainer's compute accounting (attack forward+backward passes, GFLOPs; engine/stages.py).

The code is snapshotted into the output folder first, so editing the worktree while this runs
does not change what it measures. Results: <out>/results.json (incrementally) and, with --write,
a section of docs/benchmarks.md between markers.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- two_stage:begin -->", "<!-- two_stage:end -->"


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()


def write_recipe(src, dst, a, seed, two_stage):
    with open(os.path.join(ROOT, src)) as f:
        cfg = yaml.safe_load(f)
    cfg["name"] = f"{'two' if two_stage else 'one'}_stage_s{seed}"
    cfg["seed"] = seed
    cfg["data"].update(path=os.path.abspath(a.mnist), root=os.path.abspath(a.data_root), batch_size=a.batch,
                       epoch_size=60000, seed=seed)
    cfg["model"]["width"] = a.width
    if two_stage:
        cfg["stages"][0]["samples"] = a.weak_samples
        cfg["stages"][1]["samples"] = a.strong_samples
        for s in cfg["stages"]:
            s.pop("epochs", None)
    else:
        cfg["data"]["epoch_size"] = a.base_samples
        cfg["train"]["epochs"] = 1
    cfg["eval"].update(attacks=["pgd"], eps=[0.0, 0.3], pgd_steps=20, autoattack=True,
                       autoattack_steps=a.aa_steps, max_samples=a.eval_samples)
    cfg["tracking"] = {"wandb": False}
    cfg.setdefault("train", {})["progress"] = False
    with open(dst, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def run_one(a, code, seed, two_stage):
    arm = "two" if two_stage else "one"
    recipe = os.path.join(a.out, f"{arm}_s{seed}.yaml")
    write_recipe("configs/mnist/" + ("advxl_two_stage.yaml" if two_stage else "pgd_at.yaml"), recipe, a, seed,
                 two_stage)
    env = dict(os.environ, PYTHONPATH=code, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "scaletrain.cli", "train", recipe, f"out_dir={a.out}/runs"],
                       env=env, capture_output=True, text=True, cwd=a.out)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{arm}-stage seed {seed} failed:\n{p.stderr[-3000:]}")
    with open(os.path.join(a.out, "runs", f"{arm}_stage_s{seed}", "report.json")) as f:
        rep = json.load(f)
    i = rep["attacks"]["pgd"]["eps"].index(0.3)
    st = rep["stages"]
    return {"arm": arm, "seed": seed, "clean": rep["clean_acc"], "pgd20": rep["attacks"]["pgd"]["acc"][i],
            "autoattack": rep["autoattack"]["acc"][i], "wall_s": round(wall, 1),
            "train_s": rep["train"]["seconds"], "stage_s": [s["seconds"] for s in st],
            "samples": sum(s["samples"] for s in st),
            "attack_passes": sum(s["attack_fwd_bwd_passes"] for s in st),
            "total_passes": sum(s["fwd_bwd_passes"] for s in st),
            "attack_gflops": sum(s["attack_gflops"] for s in st), "total_gflops": sum(s["total_gflops"] for s in st),
            "stages": st, "load": os.getloadavg()[0]}


def mean_sd(vals):
    return (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def table(res, a, meta):
    lines = [f"Measured {meta['date']} on the shared 2-core CPU machine (load average {meta['load_start']:.1f} at "
             f"start, {meta['load_end']:.1f} at the end; wall times are noisy, compute counts are exact), "
             f"commit {meta['commit']}, by `{meta['command']}` ({meta['minutes']:.0f} min in all).", "",
             f"Setup: digits_cnn width {a.width}, batch {a.batch}, Adam, eps 0.3 (L-inf), MNIST from the IDX "
             f"files. One-stage: PGD-3 (step 0.1) at 28x28 for {a.base_samples} samples. Two-stage: "
             f"{a.weak_samples} samples at 14x14 with PGD-1 (random start, step 0.375), then "
             f"{a.strong_samples} samples at 28x28 with PGD-3, optimizer state carried over. Evaluation on "
             f"the first {a.eval_samples} test images: PGD-20 (step 2.5 eps/20) and AutoAttack-style "
             f"(APGD-CE then APGD-T, {a.aa_steps} steps each; the standard AutoAttack uses 100).", "",
             "| arm | clean % | PGD-20 % @0.3 | AutoAttack-style % @0.3 | train s | wall s | attack fwd+bwd | "
             "total GFLOPs | compute vs one-stage |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = statistics.mean(r["total_gflops"] for r in res if r["arm"] == "one")
    for arm, label in (("one", "one-stage PGD-3"), ("two", "two-stage (PGD-1 @14px, PGD-3 @28px)")):
        rs = [r for r in res if r["arm"] == arm]
        if not rs:
            continue
        c, p, aa = (mean_sd([100 * r[k] for r in rs]) for k in ("clean", "pgd20", "autoattack"))
        tr, w = mean_sd([r["train_s"] for r in rs]), mean_sd([r["wall_s"] for r in rs])
        g = statistics.mean(r["total_gflops"] for r in rs)
        lines.append(f"| {label} (n={len(rs)}) | {c[0]:.1f} ± {c[1]:.1f} | {p[0]:.1f} ± {p[1]:.1f} | "
                     f"{aa[0]:.1f} ± {aa[1]:.1f} | {tr[0]:.0f} ± {tr[1]:.0f} | {w[0]:.0f} | "
                     f"{statistics.mean(r['attack_passes'] for r in rs):,.0f} | {g:,.0f} | {g / base:.2f}x |")
    lines += ["", "Per seed:", "", "| arm | seed | clean % | PGD-20 % | AA % | train s | attack fwd+bwd |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res:
        lines.append(f"| {r['arm']} | {r['seed']} | {100 * r['clean']:.1f} | {100 * r['pgd20']:.1f} | "
                     f"{100 * r['autoattack']:.1f} | {r['train_s']:.0f} | {r['attack_passes']:,} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--base-samples", type=int, default=16000)
    ap.add_argument("--weak-samples", type=int, default=16000)
    ap.add_argument("--strong-samples", type=int, default=6000)
    ap.add_argument("--eval-samples", type=int, default=400)
    ap.add_argument("--aa-steps", type=int, default=20)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--mnist", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    ap.add_argument("--data-root", default=os.path.join(ROOT, "bench", "out", "data", "mnist"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "two_stage"))
    ap.add_argument("--write", default=None, help="markdown file to put the table in (between markers)")
    ap.add_argument("--table-only", action="store_true",
                    help="no runs: rebuild the table from <out>/results.json (e.g. of an interrupted bench)")
    a = ap.parse_args()
    a.out = os.path.abspath(a.out)
    if a.table_only:
        with open(os.path.join(a.out, "results.json")) as f:
            saved = json.load(f)
        meta, res = saved["meta"], saved["results"]
        meta.setdefault("load_end", res[-1]["load"])
        meta.setdefault("minutes", sum(r["wall_s"] for r in res) / 60)
        return write_table(table(res, a, meta), a)
    os.makedirs(a.out, exist_ok=True)
    shutil.rmtree(os.path.join(a.out, "runs"), ignore_errors=True)
    code = os.path.join(a.out, "code")
    shutil.rmtree(code, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "scaletrain"), os.path.join(code, "scaletrain"))
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": sh("git rev-parse --short HEAD"),
            "load_start": os.getloadavg()[0], "command": "python bench/two_stage.py " + " ".join(sys.argv[1:])}
    print(f"uptime: {sh('uptime')}", flush=True)
    t0, res = time.time(), []
    for seed in a.seeds:
        for two in (False, True):
            r = run_one(a, code, seed, two)
            res.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "stages"}), flush=True)
            with open(os.path.join(a.out, "results.json"), "w") as f:
                json.dump({"meta": meta, "results": res}, f, indent=1)
    meta.update(load_end=os.getloadavg()[0], minutes=(time.time() - t0) / 60)
    print(f"uptime: {sh('uptime')}", flush=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": res}, f, indent=1)
    write_table(table(res, a, meta), a)


def write_table(md, a):
    print(md)
    if a.write:
        path = os.path.join(ROOT, a.write)
        text = open(path).read()
        block = f"{BEGIN}\n{md}\n{END}"
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):] if BEGIN in text else \
            text.rstrip() + "\n\n## Two-stage (AdvXL-style) vs one-stage PGD-AT on MNIST\n\n" + block + "\n"
        with open(path, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
