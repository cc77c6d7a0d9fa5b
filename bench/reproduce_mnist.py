"""Reproduce Wong, Rice & Kolter 2020's MNIST table with scaletrain, in one command:

    python bench/reproduce_mnist.py                     # fast AT + Madry at this machine's budget
    python bench/reproduce_mnist.py --madry-epochs 4    # a longer Madry run
    python bench/reproduce_mnist.py --full              # Madry at the published budget (GPU check)

Runs (outputs under --out, default bench/out/mnist; a run whose model.pt exists is not trained again,
an evaluation whose report.json exists is not run again; --fresh redoes everything):

1. shards of ../shared/data/mnist with the official split (60000 train / 10000 t10k test);
2. fast AT through `scaletrain train` (config -> CLI): Wong et al.'s 2-conv net (`wong_mnist`), FGSM
   with random start (eps 0.3, step 0.375), 10 epochs, batch 100, Adam, lr 0 -> 5e-3 (2/5 of the run)
   -> 0; published 98.50 clean / 88.77 PGD-50x10. At the same time, in a second process, the same
   recipe as a plain PyTorch loop (bench/plain_fast_at.py): scaletrain's steps/s over the plain
   loop's, both on one thread, both seeing the same machine load;
3. Madry et al.'s PGD-AT (PGD-40, step 0.01, random start, batch 50, Adam at a flat 1e-4: the
   settings fast_adversarial's README gives for Madry's MNIST challenge) for --madry-epochs epochs
   (published budget: 100 epochs, --full), then the same recipe stopped at the fast-AT run's
   training time (equal wall time: the question Wong et al. answered);
4. every model through `scaletrain eval` (CLI): PGD-50 (step 0.01) x 10 restarts at eps 0.3 on all
   10,000 test images, and the AutoAttack-style preset (APGD-CE + APGD-T) on --aa-samples images.

Results: <out>/results.json and a table on stdout; --update-docs writes it into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

PUBLISHED = {"fast_at": (98.50, 88.77), "madry": (98.53, 89.62)}
HEADING = "## MNIST reproduction (Wong et al. 2020)"


def common(a, name):
    return [f"name={name}", f"out_dir={a.out}", "resume=auto", "seed=0",
            "data.source=idx", f"data.path={os.path.abspath(a.data)}", f"data.root={a.out}/data-official",
            "data.split=official", "data.val_fraction=0.0", "data.shard_samples=2000", "data.shuffle_buffer=10000",
            "data.eval_batch_size=1000",
            "model.name=wong_mnist", "model.image_size=28", "model.in_channels=1", "model.width=16",
            "optim.name=adam", "optim.weight_decay=0.0",
            f"engine.cpu_threads={a.threads}", f"engine.device={a.device}",
            "train.progress=false", "train.log_every=100", "tracking.wandb=false",
            # training's own final evaluation: clean accuracy only; the reproduction's evaluation is step 4
            "eval.attacks=[]", "eval.eps=[0.0]", f"eval.cpu_threads={a.threads}"]


def fast_at_overrides(a):
    from scaletrain.methods import available
    method = "fast_at" if "fast_at" in available() else "pgd_at"   # pgd_at + fgsm_rs = the same step
    steps = 10 * 600
    return common(a, "fast_at") + [
        f"method.name={method}", "method.attack.name=fgsm_rs", "method.attack.eps=0.3", "method.attack.alpha=0.375",
        "method.attack.kwargs={clip_start: false}",   # Wong et al.'s code: gradient at the unclipped start
        "train.epochs=10", "data.batch_size=100", "optim.lr=5e-3", "optim.schedule=linear",
        f"optim.warmup_steps={steps * 2 // 5}"]


def madry_overrides(a, name, epochs, epoch_size=None):
    o = common(a, name) + [
        "method.name=pgd_at", "method.attack.name=pgd", "method.attack.eps=0.3", "method.attack.alpha=0.01",
        "method.attack.steps=40", "method.attack.random_start=true",
        f"train.epochs={epochs}", "data.batch_size=50", "optim.lr=1e-4", "optim.schedule=constant"]
    if epoch_size:
        o += ["data.mode=resampled", f"data.epoch_size={epoch_size}"]
    return o


def sh(cmd, log):
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ROOT})


def train(a, name, overrides, plain=False):
    run = os.path.join(a.out, name)
    if os.path.exists(os.path.join(run, "model.pt")) and not a.fresh:
        print(f"{name}: trained already ({run})", flush=True)
        return
    log = os.path.join(a.out, f"{name}.log")
    procs = [sh([sys.executable, "-m", "scaletrain.cli", "train", *overrides], log)]
    if plain:
        procs.append(sh([sys.executable, os.path.join(HERE, "plain_fast_at.py"), "--data", a.data, "--threads",
                         str(a.threads), "--json", os.path.join(a.out, "plain_fast_at.json")],
                        os.path.join(a.out, "plain_fast_at.log")))
    for p in procs:
        if p.wait() != 0:
            sys.exit(f"failed: see {log}")


def train_info(a, name):
    with open(os.path.join(a.out, name, "report.json")) as f:
        r = json.load(f)
    return {"seconds": r["train"]["seconds"], "steps": r["train"]["global_step"], "clean_train_eval": r["clean_acc"]}


def evaluate(a, name):
    """PGD-50 x 10 (step 0.01) at eps 0.3 on the whole test set, then the AutoAttack-style preset."""
    run = os.path.join(a.out, name)
    out = {}
    for kind, extra in (("pgd", ["eval.attacks=[pgd]", "eval.pgd_steps=50", "eval.pgd_alpha=0.01",
                                 "eval.restarts=10", f"eval.max_samples={a.pgd_samples}"]),
                        ("aa", ["eval.attacks=[]", "eval.autoattack=true", "eval.autoattack_steps=100",
                                f"eval.max_samples={a.aa_samples}"])):
        dest = os.path.join(run, f"eval-{kind}")
        if not (os.path.exists(os.path.join(dest, "report.json")) and not a.fresh):
            log = os.path.join(a.out, f"{name}-eval-{kind}.log")
            p = sh([sys.executable, "-m", "scaletrain.cli", "eval", "--out", dest, "--no-progress", "--no-wandb",
                    "--fresh", run, "eval.eps=[0.3]", "eval.batch_size=1000", f"eval.cpu_threads={a.eval_threads}",
                    *extra], log)
            if p.wait() != 0:
                sys.exit(f"failed: see {log}")
        with open(os.path.join(dest, "report.json")) as f:
            r = json.load(f)
        if kind == "pgd":
            out.update(n=r["n"], clean=100 * r["clean_acc"], pgd=100 * r["attacks"]["pgd"]["acc"][-1],
                       pgd_eval_seconds=r["seconds"])
        else:
            out.update(aa_n=r["n"], aa=100 * r["autoattack"]["acc"][-1], aa_eval_seconds=r["seconds"])
    return out


def table(res):
    lines = ["| run | epochs | train time (s) | steps | clean (%) | PGD-50x10 (%) | AutoAttack-style (%) | "
             "published clean / PGD | PGD gap (points) |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, r in res["runs"].items():
        pub = PUBLISHED.get(r["recipe"])
        gap = f"{r['pgd'] - pub[1]:+.2f}" if pub else ""
        lines.append(f"| {name} | {r['epochs']} | {r['seconds']:.0f} | {r['steps']} | {r['clean']:.2f} | "
                     f"{r['pgd']:.2f} | {r['aa']:.2f} (n={r['aa_n']}) | "
                     f"{f'{pub[0]:.2f} / {pub[1]:.2f}' if pub else ''} | {gap} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    p.add_argument("--out", default=os.path.join(HERE, "out", "mnist"))
    p.add_argument("--madry-epochs", type=int, default=1, help="Madry PGD-AT epochs here (published: 100)")
    p.add_argument("--full", action="store_true", help="Madry at the published 100 epochs (needs a GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    p.add_argument("--eval-threads", type=int, default=0, help="eval.cpu_threads (0 = every core)")
    p.add_argument("--pgd-samples", type=int, default=10000, help="test images for PGD-50 x 10 (all: 10000)")
    p.add_argument("--aa-samples", type=int, default=10000, help="test images for the AutoAttack-style preset")
    p.add_argument("--only", choices=["train", "all"], default="all", help="train only (evaluate later)")
    p.add_argument("--fresh", action="store_true", help="retrain and re-evaluate everything")
    p.add_argument("--update-docs", action="store_true")
    a = p.parse_args(argv)
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    madry_epochs = 100 if a.full else a.madry_epochs
    t0 = time.time()

    train(a, "fast_at", fast_at_overrides(a), plain=True)
    fast = train_info(a, "fast_at")
    madry = f"madry_{madry_epochs}ep"
    train(a, madry, madry_overrides(a, madry, madry_epochs))
    m = train_info(a, madry)
    # equal wall time: Madry's recipe for as many steps as it makes in fast AT's training time
    eq_steps = max(1, int(fast["seconds"] / (m["seconds"] / m["steps"])))
    train(a, "madry_equal_time", madry_overrides(a, "madry_equal_time", 1, epoch_size=eq_steps * 50))
    if a.only == "train":
        return
    with open(os.path.join(a.out, "plain_fast_at.json")) as f:
        plain = json.load(f)
    res = {"runs": {}, "plain_fast_at": plain,
           "speed_ratio_vs_plain": (fast["steps"] / fast["seconds"]) / plain["steps_per_s"]}
    for name, recipe, epochs in (("fast_at", "fast_at", 10), (madry, "madry", madry_epochs),
                                 ("madry_equal_time", "madry_equal", round(eq_steps / 1200, 3))):
        info = train_info(a, name)
        res["runs"][name] = {"recipe": recipe, "epochs": epochs, **info, **evaluate(a, name)}
    res["total_seconds"] = time.time() - t0
    res["load"] = os.getloadavg()
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(table(res))
    print(f"scaletrain / plain steps/s: {res['speed_ratio_vs_plain']:.3f} "
          f"({fast['steps'] / fast['seconds']:.2f} vs {plain['steps_per_s']:.2f})")


if __name__ == "__main__":
    main()
