"""Reproduce Wong, Rice & Kolter 2020's MNIST table with scaletrain, in one command:

    python bench/reproduce_mnist.py                     # everything below, at this machine's budget
    python bench/reproduce_mnist.py --pgd-epochs 10     # the PGD-40 run at fast AT's 10 epochs
    python bench/reproduce_mnist.py --full              # + the published PGD row's recipe, 100 epochs (GPU)
    python bench/reproduce_mnist.py --only fast_at --seed 3 --out bench/out/mnist-s3 --pgd-samples 1000
                                                        # one more fast-AT seed: train, Wong et al.'s protocol

Runs (outputs under --out, default bench/out/mnist; a run whose model.pt exists is not trained again,
an evaluation whose report / json exists is not run again; --fresh redoes everything):

1. shards of ../shared/data/mnist with the official split (60000 train / 10000 t10k test);
2. fast AT through `scaletrain train` (config -> CLI): Wong et al.'s 2-conv net (`wong_mnist`), FGSM
   with random start (eps 0.3, step 0.375, gradient at the unclipped start), 10 epochs, batch 100,
   Adam, lr 0 -> 5e-3 (2/5 of the run) -> 0; published 98.50 clean / 88.77. At the same time, in a
   second process, the same recipe as a plain PyTorch loop (bench/plain_fast_at.py, model saved);
3. Wong et al.'s PGD training mode (their train_mnist.py --attack pgd --alpha 0.01: the same net,
   batch and cyclic schedule, PGD-40 step 0.01 from a clipped random start, a sample stops once the
   model misclassifies it: scaletrain's PGD with track_best) for --pgd-epochs epochs,
   then the same recipe for the steps that fit in fast AT's training time (equal wall time: the
   question Wong et al. answered). The published PGD row (98.53 / 89.62) is their net trained with
   Madry's MNIST-challenge settings (fast_adversarial MNIST README: Adam at a flat 1e-4, batch 50,
   100 epochs): --madry-epochs N runs that recipe for N epochs, --full for 100 (a GPU job);
4. every model: `scaletrain eval` PGD-50 (step 0.01) x 10 restarts at eps 0.3 on --pgd-samples
   official test images (a sample counts as broken if any restart broke it), the same images under
   Wong et al.'s own protocol (bench/wong_eval.py: only still-correct samples step, and per sample
   the restart of largest loss is kept), and the AutoAttack-style preset on --aa-samples images;
   the plain loop's model under Wong et al.'s protocol too;
5. speed: scaletrain's fast AT and the plain loop for --speed-epochs epochs (default 10: the whole
   recipe), --threads threads each, run one after the other plain / scaletrain / plain / scaletrain,
   `uptime` before each: scaletrain's steps/s over the plain loop's, per adjacent pair.

--only fast_at (seed sweeps): only step 2's `scaletrain train` run (no plain loop, no PGD-40), then Wong
et al.'s protocol on the first --pgd-samples images; <out>/fast_at_summary.json. --data-root reads
shards written earlier (any folder of official-split shards of the same IDX files; nothing is written
there) instead of writing <out>/data-official.

Results: <out>/results.json and a table on stdout (docs/benchmarks.md quotes them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

PUBLISHED = {"fast_at": "98.50 / 88.77", "fast_at_plain": "98.50 / 88.77", "madry": "98.53 / 89.62",
             "pgd40": "98.53 / 89.62 (their PGD row: 100 epochs, flat 1e-4, batch 50)",
             "pgd40_equal": "98.53 / 89.62 (idem)"}


def common(a, name):
    return [f"name={name}", f"out_dir={a.out}", "resume=auto", f"seed={a.seed}",
            "data.source=idx", f"data.path={os.path.abspath(a.data)}", f"data.root={a.data_root}",
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


def pgd40_overrides(a, name, epochs, steps=None):
    """Wong et al.'s PGD training mode (train_mnist.py --attack pgd --alpha 0.01): their net, batch 100,
    PGD-40 step 0.01 from a random start clipped to [0, 1], Adam with the fast-AT cyclic learning rate
    (peak 5e-3 at epoch epochs*2//5 of np.interp over [0, epochs*2//5, epochs]). `steps` compresses the
    whole schedule into that many steps (the equal-wall-time run)."""
    total = steps or epochs * 600
    warm = (epochs * 2 // 5) * 600 if steps is None else total * 2 // 5
    o = common(a, name) + [
        "method.name=pgd_at", "method.attack.name=pgd", "method.attack.eps=0.3", "method.attack.alpha=0.01",
        "method.attack.steps=40", "method.attack.random_start=true",
        # their PGD moves only the samples the model still classifies correctly: a sample stops at the
        # first iterate that fools the model. scaletrain's PGD with track_best does that (and returns, for
        # a sample never fooled, its iterate of highest loss where they take the last one). Without it
        # (every sample walks all 40 steps) the run stayed at chance (loss 2.30) for its first 100 steps.
        "method.attack.kwargs={track_best: true}",
        f"train.epochs={epochs if steps is None else 1}", "data.batch_size=100", "optim.lr=5e-3",
        "optim.schedule=linear", f"optim.warmup_steps={warm}"]
    if steps is not None:
        o += ["data.mode=resampled", f"data.epoch_size={steps * 100}"]
    return o


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


def plain_cmd(a, json_path, *extra):
    return [sys.executable, os.path.join(HERE, "plain_fast_at.py"), "--data", a.data, "--threads", str(a.threads),
            "--seed", str(a.seed), "--json", json_path, *extra]


def train(a, name, overrides, plain=False):
    run = os.path.join(a.out, name)
    if os.path.exists(os.path.join(run, "model.pt")) and not a.fresh:
        print(f"{name}: trained already ({run})", flush=True)
        return
    log = os.path.join(a.out, f"{name}.log")
    procs = [sh([sys.executable, "-m", "scaletrain.cli", "train", *overrides], log)]
    if plain:
        procs.append(sh(plain_cmd(a, os.path.join(a.out, "plain_fast_at.json"), "--save",
                                  os.path.join(a.out, "plain_fast_at.pt")), os.path.join(a.out, "plain_fast_at.log")))
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
        if kind == "aa" and not a.aa_samples:
            continue
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


def wong_protocol(a, model, dest):
    """bench/wong_eval.py on the first --pgd-samples official test images: their max-loss restart
    choice and the any-restart count, from the same attack trajectories."""
    if not (os.path.exists(dest) and not a.fresh):
        log = dest[:-5] + ".log"
        p = sh([sys.executable, os.path.join(HERE, "wong_eval.py"), model, "--data", a.data, "--n", str(a.pgd_samples),
                "--threads", str(max(a.eval_threads, 1)), "--json", dest], log)
        if p.wait() != 0:
            sys.exit(f"failed: see {log}")
    with open(dest) as f:
        r = json.load(f)
    return {"wong_n": r["n"], "wong_clean": 100 * r["clean"], "wong": 100 * r["wong_max_loss"],
            "wong_any_restart": 100 * r["any_restart"], "wong_kept_unbroken": r["kept_unbroken_delta"],
            "wong_eval_seconds": r["seconds"]}


def fast_at_only(a):
    """Seed sweeps: the fast-AT `scaletrain train` run alone (no plain loop, no PGD-40), then Wong et al.'s
    protocol on the first --pgd-samples official test images (0: training only)."""
    up = _uptime()
    train(a, "fast_at", fast_at_overrides(a))
    res = {"seed": a.seed, "uptime_before": up, **train_info(a, "fast_at")}
    if a.pgd_samples:
        res.update(wong_protocol(a, os.path.join(a.out, "fast_at"),
                                 os.path.join(a.out, "fast_at", f"wong_n{a.pgd_samples}.json")))
    res["uptime_after"] = _uptime()
    with open(os.path.join(a.out, "fast_at_summary.json"), "w") as f:
        json.dump(res, f, indent=1)
    return res


def _uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def speed(a):
    """scaletrain's fast-AT steps/s over the plain loop's: --speed-epochs epochs (600 steps each) of the same
    recipe, --threads threads, run one after the other in the order plain, scaletrain, plain, scaletrain
    (the machine's load drifts; two pairs show how much), `uptime` before each run. Steps/s are of the
    training loops only (start-up and final evaluation excluded, for both)."""
    dest = os.path.join(a.out, "speed.json")
    if os.path.exists(dest) and not a.fresh:
        with open(dest) as f:
            return json.load(f)
    o = [v for v in fast_at_overrides(a) if not v.startswith(("name=", "train.epochs=", "optim.warmup_steps="))]
    o += [f"train.epochs={a.speed_epochs}", f"optim.warmup_steps={a.speed_epochs * 600 * 2 // 5}"]
    runs = []
    for k in range(2):
        for kind in ("plain", "scaletrain"):
            name = f"speed_{kind}_{k}"
            up = _uptime()
            print(up, flush=True)
            if kind == "plain":
                pj = os.path.join(a.out, f"{name}.json")
                p = sh(plain_cmd(a, pj, "--epochs", str(a.speed_epochs), "--eval-samples", "0"),
                       os.path.join(a.out, f"{name}.log"))
            else:
                run = os.path.join(a.out, name)
                if os.path.exists(run):
                    shutil.rmtree(run)      # a fresh run every time (no resume of a finished one)
                p = sh([sys.executable, "-m", "scaletrain.cli", "train", f"name={name}", *o],
                       os.path.join(a.out, f"{name}.log"))
            if p.wait() != 0:
                sys.exit(f"speed run failed: see {a.out}/{name}.log")
            if kind == "plain":
                with open(pj) as f:
                    r = json.load(f)
                runs.append({"kind": kind, "steps": r["steps"], "seconds": r["seconds"], "uptime": up})
            else:
                r = train_info(a, name)
                runs.append({"kind": kind, "steps": r["steps"], "seconds": r["seconds"], "uptime": up})
    for r in runs:
        r["steps_per_s"] = r["steps"] / r["seconds"]
    ratios = [runs[i + 1]["steps_per_s"] / runs[i]["steps_per_s"] for i in (0, 2)]
    res = {"runs": runs, "pair_ratios": ratios, "ratio": sum(ratios) / 2, "threads": a.threads,
           "steps": runs[0]["steps"], "uptime_end": _uptime()}
    with open(dest, "w") as f:
        json.dump(res, f, indent=1)
    return res


def table(res):
    lines = ["| run | epochs | steps | train time (s) | clean (%) | scaletrain PGD-50x10, any restart (%) | "
             "Wong protocol, max-loss restart (%) | Wong protocol, any restart (%) | AutoAttack-style (%) | "
             "published clean / PGD |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in res["runs"].items():
        pub = PUBLISHED.get(r.get("recipe"))
        f = lambda k: f"{r[k]:.2f}" if k in r else "-"   # noqa: E731
        n = lambda k: f" (n={r[k]})" if k in r else ""   # noqa: E731
        aa = f"{r['aa']:.2f} (n={r['aa_n']})" if "aa" in r else "-"
        secs = f"{r['seconds']:.0f}" if "seconds" in r else "-"
        lines.append(f"| {name} | {r.get('epochs', '-')} | {r.get('steps', '-')} | {secs} | "
                     f"{f('clean') if 'clean' in r else f('wong_clean')} | {f('pgd')}{n('n')} | "
                     f"{f('wong')}{n('wong_n')} | "
                     f"{f('wong_any_restart')} | {aa} | {pub or ''} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    p.add_argument("--out", default=os.path.join(HERE, "out", "mnist"))
    p.add_argument("--pgd-epochs", type=int, default=1,
                   help="epochs of Wong et al.'s PGD-40 mode with the cyclic schedule (their fast-AT budget: 10)")
    p.add_argument("--madry-epochs", type=int, default=0,
                   help="epochs of the published PGD row's recipe (Adam 1e-4 flat, batch 50; published: 100); "
                        "0 skips it (1 epoch stays at chance)")
    p.add_argument("--full", action="store_true", help="the published PGD row's recipe at 100 epochs (needs a GPU)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every run (use its own --out per seed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each training process")
    p.add_argument("--eval-threads", type=int, default=1, help="eval.cpu_threads and wong_eval.py --threads")
    p.add_argument("--pgd-samples", type=int, default=10000, help="test images for PGD-50 x 10 (all: 10000)")
    p.add_argument("--aa-samples", type=int, default=1000, help="test images for the AutoAttack-style preset (0: skip)")
    p.add_argument("--speed-epochs", type=int, default=10,
                   help="epochs of the paired speed runs (600 steps each; 10 = the whole recipe)")
    p.add_argument("--only", choices=["train", "speed", "fast_at", "all"], default="all",
                   help="train only (evaluate later), only the paired speed runs, or only the fast-AT run "
                        "and its Wong-protocol evaluation on --pgd-samples images (seed sweeps)")
    p.add_argument("--data-root", default=None,
                   help="an existing folder of official-split shards of --data to read (default: "
                        "<out>/data-official, written on first use)")
    p.add_argument("--fresh", action="store_true", help="retrain and re-evaluate everything")
    a = p.parse_args(argv)
    a.out = os.path.abspath(a.out)
    a.data_root = os.path.abspath(a.data_root or os.path.join(a.out, "data-official"))
    os.makedirs(a.out, exist_ok=True)
    madry_epochs = 100 if a.full else a.madry_epochs
    t0 = time.time()
    if a.only == "speed":
        sp = speed(a)
        print(json.dumps(sp, indent=1))
        return
    if a.only == "fast_at":
        print(json.dumps(fast_at_only(a), indent=1))
        return

    train(a, "fast_at", fast_at_overrides(a), plain=True)
    fast = train_info(a, "fast_at")
    pgd = f"pgd40_{a.pgd_epochs}ep"
    train(a, pgd, pgd40_overrides(a, pgd, a.pgd_epochs))
    m = train_info(a, pgd)
    # equal wall time: Wong et al.'s PGD-40 mode for the steps that cost what fast AT's run cost, its cyclic
    # schedule compressed into them. Cost = forward+backward passes over a batch (fast AT: 1 attack + 1
    # training pass a step; PGD-40: 40 + 1), which is wall time up to the per-step overheads and, unlike
    # two measured times on a shared machine, does not depend on the load; both measured s/step are reported.
    eq_steps = max(1, round(fast["steps"] * 2 / 41))
    train(a, "pgd40_equal_time", pgd40_overrides(a, "pgd40_equal_time", 1, steps=eq_steps))
    runs = [("fast_at", "fast_at", 10), (pgd, "pgd40", a.pgd_epochs),
            ("pgd40_equal_time", "pgd40_equal", round(eq_steps / 600, 3))]
    if madry_epochs:
        madry = f"madry_{madry_epochs}ep"
        train(a, madry, madry_overrides(a, madry, madry_epochs))
        runs.append((madry, "madry", madry_epochs))
    if a.only == "train":
        return
    with open(os.path.join(a.out, "plain_fast_at.json")) as f:
        plain = json.load(f)
    res = {"runs": {}, "plain_fast_at": plain, "equal_time_steps": eq_steps,
           "s_per_step": {"fast_at": fast["seconds"] / fast["steps"], pgd: m["seconds"] / m["steps"]},
           "full_run_speed_ratio_vs_plain": (fast["steps"] / fast["seconds"]) / plain["steps_per_s"]}
    for name, recipe, epochs in runs:
        info = train_info(a, name)
        res["runs"][name] = {"recipe": recipe, "epochs": epochs, **info, **evaluate(a, name),
                             **wong_protocol(a, os.path.join(a.out, name), os.path.join(a.out, name, "wong.json"))}
    res["runs"]["plain_fast_at (bench/plain_fast_at.py)"] = {
        "recipe": "fast_at_plain", "epochs": 10, "steps": plain["steps"], "seconds": plain["seconds"],
        **wong_protocol(a, os.path.join(a.out, "plain_fast_at.pt"), os.path.join(a.out, "plain_fast_at-wong.json"))}
    res["speed"] = speed(a)
    res["total_seconds"] = time.time() - t0
    res["load"] = os.getloadavg()
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(table(res))
    sp = res["speed"]
    print(f"speed, {sp['steps']}-step runs, {sp['threads']} thread(s), plain / scaletrain / plain / scaletrain: "
          + ", ".join(f"{r['kind']} {r['steps_per_s']:.2f} steps/s ({r['uptime']})" for r in sp["runs"])
          + f"; scaletrain / plain = {sp['ratio']:.3f} (pairs {sp['pair_ratios'][0]:.3f}, {sp['pair_ratios'][1]:.3f})")


if __name__ == "__main__":
    main()
