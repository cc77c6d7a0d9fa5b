"""Attack throughput (samples/s) of ours vs torchattacks, and robust-accuracy agreement.

    python bench/attack_speed.py                       # speed table (PGD-10, APGD-CE-10) on CPU
    python bench/attack_speed.py --agreement           # + agreement table (all test digits)
    python bench/attack_speed.py --agreement --update-docs   # rewrite our two sections of docs/benchmarks.md
    python bench/attack_speed.py --device cuda --batch 4096  # on a GPU
    python bench/attack_speed.py --eval-cost --run bench/out/mnist/fast_at --batch 500 --threads 1
        # the evaluation suite's PGD-50 x 10 column vs torchattacks, and a curve vs its largest column
    nice -n 5 python bench/attack_speed.py --eval-cost --column-only --run bench/out/mnist/fast_at \
        --batch 200 --threads 1 --repeats 5     # only the column: ours, theirs, ours, theirs, ...

Same trained model (the default digits CNN, trained here in seconds), same batch, same
hyper-parameters. Each measurement is the median of ``--repeats`` runs, ours and theirs
interleaved so that a shared machine's load hits both alike; one warm-up run each (``--eval-cost``:
no warm-up, >= 3 rounds in ABBA order, round i seeds every variant's random starts with i).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scaletrain.attacks import create_attack  # noqa: E402
from scaletrain.evaluate.toy import digits_split, trained_digits_model  # noqa: E402

SPEED_HEADING = "## Attack speed"
COST_HEADING = "## Evaluation cost (PGD-50 x 10 column, curve vs column)"
AGREE_HEADING = "## Attack agreement with torchattacks"


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def speed(model, x, y, device, repeats, eps=0.1, steps=10):
    import torchattacks as ta
    alpha = eps / 4
    pairs = {
        f"PGD-{steps} (L-inf)": (lambda: create_attack("pgd", eps=eps, alpha=alpha, steps=steps),
                                 lambda: ta.PGD(model, eps=eps, alpha=alpha, steps=steps)),
        f"APGD-CE-{steps} (L-inf)": (lambda: create_attack("apgd_ce", eps=eps, steps=steps),
                                     lambda: ta.APGD(model, eps=eps, steps=steps, loss="ce")),
        f"APGD-DLR-{steps} (L-inf)": (lambda: create_attack("apgd_dlr", eps=eps, steps=steps),
                                      lambda: ta.APGD(model, eps=eps, steps=steps, loss="dlr")),
    }
    # torchattacks' DeepFool works sample by sample (minutes for a full batch): fewer samples and repeats
    pairs["DeepFool-50 (L2, 64 samples)"] = (
        lambda: create_attack("deepfool", eps=float("inf"), norm="l2", steps=50),
        lambda: ta.DeepFool(model, steps=50, overshoot=0.02))
    rows = []
    for name, (make_ours, make_theirs) in pairs.items():
        ours, theirs = make_ours(), make_theirs()
        xs, ys, reps = (x[:64], y[:64], min(repeats, 3)) if name.startswith("DeepFool") else (x, y, repeats)
        run_ours = lambda: ours(model, xs, ys, torch.Generator(device=device).manual_seed(0))  # noqa: E731
        run_theirs = lambda: theirs(xs, ys)  # noqa: E731
        run_ours(), run_theirs()                  # warm-up
        t_o, t_t = [], []
        for _ in range(reps):
            for fn, acc in ((run_ours, t_o), (run_theirs, t_t)):
                _sync(device)
                t = time.perf_counter()
                fn()
                _sync(device)
                acc.append(time.perf_counter() - t)
        n = xs.shape[0]
        so, st = n / statistics.median(t_o), n / statistics.median(t_t)
        # paired: each repeat runs ours and theirs back to back, so the ratio of a pair sees one load
        ratios = sorted(b / a for a, b in zip(t_o, t_t))
        rows.append({"attack": name, "ours": so, "theirs": st, "ratio": statistics.median(ratios),
                     "ratio_lo": ratios[0], "ratio_hi": ratios[-1]})
    return rows


def _timed(fn, device):
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def eval_cost(model, x, y, device, repeats, eps=0.3, alpha=0.01, steps=50, restarts=10, grid=(0.1, 0.2, 0.3),
              column_only=False):
    """Paired timings of (1) `evaluate_model`'s PGD-`steps` x `restarts` column at `eps` (the path of
    `scaletrain eval`) against torchattacks on the same model and batch: `MultiAttack` of `restarts`
    PGDs (torchattacks' own survivors-only restarts) and a plain loop of `restarts` full-batch PGDs;
    (2) a curve over `grid` against its largest-epsilon column, nested (default) and independent.
    ``column_only``: only (1)'s suite column and MultiAttack, alternating."""
    import torchattacks as ta
    from scaletrain.config.schema import EvalConfig
    from scaletrain.evaluate import evaluate_model

    threads = torch.get_num_threads()
    data = [(x, y)]
    rnd = [0]      # the round: every variant draws its random starts from seed = round (ours: eval.seed)

    def suite(eps_list, nested=True):
        def run():
            cfg = EvalConfig(attacks=["pgd"], eps=list(eps_list), pgd_steps=steps, pgd_alpha=alpha,
                             restarts=restarts, batch_size=x.shape[0], nested=nested, cpu_threads=threads,
                             seed=rnd[0])
            return evaluate_model(model, data, cfg, device=device, progress=False)
        return run

    def ta_multi():
        atk = ta.MultiAttack([ta.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
                              for _ in range(restarts)])
        x_adv = atk(x, y)
        with torch.no_grad():
            return float((model(x_adv).argmax(1) == y).float().mean())

    def ta_loop():
        ok = torch.ones_like(y, dtype=torch.bool)
        atk = ta.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        for _ in range(restarts):
            x_adv = atk(x, y)
            with torch.no_grad():
                ok &= model(x_adv).argmax(1) == y
        return float(ok.float().mean())

    runs = {"ours: column": suite([eps]), "torchattacks MultiAttack": ta_multi, "torchattacks loop": ta_loop,
            "ours: curve, nested": suite(grid), "ours: curve, independent": suite(grid, nested=False)}
    if column_only:
        runs = {k: runs[k] for k in ("ours: column", "torchattacks MultiAttack")}
    times, acc, passes, faults = ({k: [] for k in runs} for _ in range(4))
    seen = []
    hook = model.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    for i in range(repeats):          # interleaved: each round sees one load for every variant
        order = list(runs.items()) if i % 2 == 0 else list(runs.items())[::-1]   # ABBA: neither always first
        for k, fn in order:
            seen.clear()
            rnd[0] = i
            torch.manual_seed(i)       # torchattacks draws its starts from the global RNG
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t, out = _timed(fn, device)
            faults[k].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            times[k].append(t)
            passes[k].append(sum(seen))  # samples through the model (forward; most with a backward)
            acc[k].append(out["attacks"]["pgd"]["acc"][-1] if isinstance(out, dict) else out)
            print(f"round {i + 1}: {k} {t:.2f} s, {sum(seen)} sample-passes, robust acc {100 * acc[k][-1]:.2f}%, "
                  f"{faults[k][-1]} page faults", flush=True)
    hook.remove()
    base = times["ours: column"]
    rows = []
    for k in runs:
        ratios = sorted(t / b for t, b in zip(times[k], base))
        p = statistics.median(passes[k])
        rows.append({"variant": k, "seconds": statistics.median(times[k]), "acc": statistics.mean(acc[k]),
                     "passes": p, "pass_ratio": p / statistics.median(passes["ours: column"]),
                     "ms_per_kpass": statistics.median(1e6 * t / max(n, 1) for t, n in zip(times[k], passes[k])),
                     "faults": statistics.median(faults[k]),
                     "ratio": statistics.median(ratios), "lo": ratios[0], "hi": ratios[-1]})
    return rows


def cost_table(rows):
    """``time / ours-column`` of the torchattacks rows is the speed-up theirs / ours (> 1: ours faster)."""
    lines = ["| variant | seconds (median) | robust acc at the largest eps (mean of rounds) | time / ours-column, "
             "median of rounds | range | sample-passes through the model (median) | passes / ours-column | "
             "ms per 1,000 passes (median) | page faults (median) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['seconds']:.2f} | {100 * r['acc']:.2f}% | {r['ratio']:.3f} | "
              f"{r['lo']:.3f}-{r['hi']:.3f} | {r['passes']:,.0f} | {r['pass_ratio']:.3f} | {r['ms_per_kpass']:.1f} | "
              f"{r['faults']:,.0f} |"
              for r in rows]
    return "\n".join(lines)


def uptime():
    """`uptime`'s line (load averages over 1, 5 and 15 minutes)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def run_model_and_batch(run, n, device):
    """The model of a finished run folder and the first n images of its test split."""
    from scaletrain.data import eval_loader
    from scaletrain.models import model_from_state
    from scaletrain.run import load_run
    cfg, state, _ = load_run(run)
    model = model_from_state(cfg.model, state).to(device)
    xs, ys, have = [], [], 0
    for xb, yb in eval_loader(cfg.data, "test", batch_size=n):
        xs.append(xb)
        ys.append(yb)
        have += xb.shape[0]
        if have >= n:
            break
    return model, torch.cat(xs)[:n].to(device), torch.cat(ys)[:n].to(device)


def speed_table(rows):
    lines = ["| attack | ours (samples/s) | torchattacks (samples/s) | speed-up, median of pairs | range |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['attack']} | {r['ours']:.0f} | {r['theirs']:.0f} | {r['ratio']:.2f} | "
              f"{r['ratio_lo']:.2f}-{r['ratio_hi']:.2f} |" for r in rows]
    return "\n".join(lines)


def agreement_table(rows):
    lines = ["| attack | samples | clean (%) | ours robust (%) | torchattacks robust (%) | ours - theirs (points) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = ""
        if "median_l2_ours" in r:
            extra = f" (median L2 {r['median_l2_ours']:.4f} vs {r['median_l2_theirs']:.4f})"
        lines.append(f"| {r['attack']}{extra} | {r['n']} | {100 * r['clean']:.1f} | {100 * r['ours']:.2f} | "
                     f"{100 * r['theirs']:.2f} | {100 * r['diff']:+.2f} |")
    return "\n".join(lines)


def machine(device):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    import torchattacks
    return (f"{cpu} ({os.cpu_count()} cores), {dev}; torch {torch.__version__}, "
            f"torchattacks {torchattacks.__version__}")


def update_section(path, heading, body):
    """Replace (or append) the section starting at ``heading`` up to the next '## ' heading."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    lines = text.split("\n")
    try:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = lines[:start] + [heading, ""] + body.rstrip("\n").split("\n") + [""] + lines[end:]
    except ValueError:
        new = lines + ([""] if lines[-1] != "" else []) + [heading, ""] + body.rstrip("\n").split("\n") + [""]
    with open(path, "w") as f:
        f.write("\n".join(new).rstrip("\n") + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=256, help="samples per attack call (digits test set: 397)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--agreement", action="store_true", help="also measure agreement with torchattacks")
    p.add_argument("--update-docs", action="store_true", help="write the tables into docs/benchmarks.md")
    p.add_argument("--eval-cost", action="store_true",
                   help="only the evaluation-cost table: PGD-50 x 10 column vs torchattacks, curve vs column")
    p.add_argument("--run", default=None, help="--eval-cost: a finished run folder (its model, its test images)")
    p.add_argument("--column-only", action="store_true",
                   help="--eval-cost: only the suite's column and torchattacks' MultiAttack, alternating")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.eval_cost:
        return main_eval_cost(a, argv)
    model = trained_digits_model().to(a.device)     # the default ModelConfig CNN (width 32)
    _, (xt, yt) = digits_split()
    reps = -(-a.batch // xt.shape[0])
    x = xt.repeat(reps, 1, 1, 1)[: a.batch].to(a.device)
    y = yt.repeat(reps)[: a.batch].to(a.device)
    desc = machine(a.device)
    cmd = "python bench/attack_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = speed(model, x, y, a.device, a.repeats)
    table = speed_table(rows)
    print(f"machine: {desc}\nbatch {a.batch}, eps 0.1, median of {a.repeats}\n\n{table}\n")
    if a.update_docs:
        docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md")
        update_section(docs, SPEED_HEADING, (
            f"Throughput of one attack call on a batch of {a.batch} digits (8x8) against the default digits "
            f"CNN (same trained model, same batch, same hyper-parameters: eps 0.1, PGD step eps/4, APGD "
            f"defaults), median of {a.repeats} interleaved runs after a warm-up; the speed-up is "
            f"t_torchattacks / t_ours per back-to-back pair (median and range over the pairs).\n\n"
            f"- machine: {desc}\n- command: `{cmd.strip()}`\n\n{table}\n\n"
            "PGD and APGD run at parity: both are the same iteration and the time is the model's forward "
            "and backward (our per-step extra work is one fused clamp); the median speed-up is >= 1 but "
            "within the run-to-run noise of this shared machine (other jobs ran at the same time; the "
            "pairing puts the same load on both, single numbers still move by 10-20%). DeepFool is where "
            "ours is much faster: all samples and all candidate classes in one batched backward per step, "
            "where torchattacks builds a per-sample Jacobian with one backward per class. "
            "No GPU was available in this session (`--device cuda` measures one)."))
    if a.agreement:
        from scaletrain.attacks.reference import agreement
        _, (xa, ya) = digits_split()
        arows = agreement(model.cpu() if a.device != "cpu" else model, xa, ya, max_deepfool=100)
        atable = agreement_table(arows)
        print(atable)
        if a.update_docs:
            update_section(docs, AGREE_HEADING, (
                f"Robust accuracy of ours vs torchattacks on the same trained digits CNN and all {xa.shape[0]} "
                "test digits (DeepFool: the first 100, mapped into [0.2, 0.8], see "
                "`scaletrain/attacks/reference.py`), L-inf eps 0.1, L2 eps 0.5, 10 steps, seed 0. "
                "The issue's bar: within 1 point and never weaker by more than 1 point.\n\n"
                f"- command: `{cmd.strip()}`\n\n{atable}\n\n"
                "Where both draw the random start from the same seed (PGD, APGD) the two implementations "
                "perform the same iteration and agree exactly; APGD's checkpoints follow the paper's "
                "ceil(p_j N) while torchattacks floors them, which can move a sample or two."))


def main_eval_cost(a, argv):
    if a.run:
        model, x, y = run_model_and_batch(a.run, a.batch, a.device)
        if a.threads:                   # load_run applies the run's engine.cpu_threads: --threads wins
            torch.set_num_threads(a.threads)
        what = f"the model of `{a.run}` and the first {x.shape[0]} images of its test split"
    else:
        model = trained_digits_model().to(a.device)
        _, (xt, yt) = digits_split()
        x, y = xt[: a.batch].to(a.device), yt[: a.batch].to(a.device)
        what = f"the default digits CNN and {x.shape[0]} test digits"
    if a.update_docs and a.column_only:
        raise SystemExit("--eval-cost --column-only: --update-docs would drop the curve rows; edit the docs by hand")
    if a.repeats < 3:
        raise SystemExit("--eval-cost: use --repeats >= 3 (rounds of interleaved runs; one round says little "
                         "on a shared machine)")
    model.eval()
    up0, load0 = uptime(), os.getloadavg()
    print(f"before: {up0}", flush=True)
    rows = eval_cost(model, x, y, a.device, a.repeats, column_only=a.column_only)
    up1, load1 = uptime(), os.getloadavg()
    table = cost_table(rows)
    cmd = "python bench/attack_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    desc = machine(a.device)
    malloc = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")) or "glibc defaults"
    theirs = next(r for r in rows if r["variant"] == "torchattacks MultiAttack")
    print(f"machine: {desc}; malloc: {malloc}\nbefore: {up0}\nafter:  {up1}\n\n{table}\n\n"
          f"speed-up torchattacks MultiAttack / ours, median of {a.repeats} rounds: {theirs['ratio']:.3f} "
          f"(range {theirs['lo']:.3f}-{theirs['hi']:.3f})\n")
    if a.update_docs:
        docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md")
        update_section(docs, COST_HEADING, (
            f"{what}; L-inf eps 0.3, PGD-50 step 0.01, 10 restarts (the MNIST reproduction's evaluation); "
            f"curve = eps 0.1, 0.2, 0.3. Rounds interleave every variant ({a.repeats} rounds); each ratio "
            "is a variant's time over the suite's column in the same round.\n\n"
            f"- machine: {desc}; 1-minute load average {load0[0]:.1f} before, {load1[0]:.1f} after "
            "(a shared machine: other jobs ran)\n"
            f"- command: `{cmd.strip()}`\n\n{table}\n"))


if __name__ == "__main__":
    main()
