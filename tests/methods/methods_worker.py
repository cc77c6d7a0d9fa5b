"""One rank of the methods equivalence run (started as a real process by tests).

usage: methods_worker.py OUT_FILE STEPS
Env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as from torchrun.
Trains every case of CASES (the SHIPPED methods, built from config as `scaletrain train` builds
them) under the DeepSpeed engine (ZeRO-1) at global batch 32 for STEPS optimizer steps, and saves
the per-step global losses and the consolidated weights to OUT_FILE.rank<r>.pt.
Counts, per case, the engine's backward calls, the module's forwards and the input-gradient
(torch.autograd.grad) calls made by attacks, summed over ranks.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import torch  # noqa: E402

from engine_helpers import Data, make_cfg, read_log  # noqa: E402
from scaletrain.engine import Trainer, build_engine, cleanup, init_distributed  # noqa: E402
from scaletrain.engine import dist as D  # noqa: E402
from scaletrain.methods import create_method  # noqa: E402
from scaletrain.models import create_model  # noqa: E402

CASES = {
    "fast_at_guard": ["method.name=fast_at", "method.attack.name=fgsm_rs", "method.attack.eps=0.2",
                      "method.attack.alpha=0.25", "method.guard.every=2", "method.guard.pgd_steps=3"],
    "free_at": ["method.name=free_at", "method.attack.name=fgsm", "method.attack.steps=1",
                "method.attack.eps=0.2", "method.replays=2", "train.epochs=2"],
    "trades": ["method.name=trades", "method.beta=3.0", "method.attack.eps=0.2", "method.attack.steps=2"],
    "mart": ["method.name=mart", "method.attack.eps=0.2", "method.attack.steps=2"],
    "pgd_at_schedules": ["method.name=pgd_at", "method.attack.eps=0.2", "method.attack.steps=3",
                         "method.attack_target=prediction", "method.clean_weight=0.3",
                         "method.eps_warmup_steps=3", "method.steps_warmup_steps=3"],
}


class Counter:
    def __init__(self):
        self.n = {"backward": 0, "forward": 0, "input_grad": 0}


def main():
    out, steps = sys.argv[1], int(sys.argv[2])
    only = sys.argv[3].split(",") if len(sys.argv) > 3 else sorted(CASES)
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", 1))
    results, dist = {}, None
    grad = torch.autograd.grad
    for name in only:
        run = os.path.join(os.path.dirname(out), f"{name}-w{world}")
        over = CASES[name]
        replays_case = "method.name=free_at" in over
        # Free AT needs no accumulation: 1 rank takes the whole global batch of 32 as one micro-batch
        mbs = 32 // world if replays_case else 16
        cfg = make_cfg(os.path.dirname(run), f"name={os.path.basename(run)}", "engine.backend=deepspeed",
                       "engine.zero_stage=1", f"data.batch_size={mbs}", "model.name=mlp", "model.width=64",
                       "optim.name=adam", "optim.lr=0.01", "optim.schedule=cosine",
                       *([] if replays_case else ["engine.global_batch_size=32"]), *over)
        dist = dist or init_distributed(cfg)
        torch.manual_seed(0)
        engine = build_engine(cfg, create_model(cfg.model), dist)
        method = create_method(cfg.method)
        c = Counter()
        eb = engine.backward

        def backward(loss, eb=eb, c=c):
            c.n["backward"] += 1
            eb(loss)
        engine.backward = backward
        engine.module.register_forward_hook(lambda m, i, o, c=c: c.n.__setitem__("forward", c.n["forward"] + 1))

        def counting_grad(*a, c=c, **k):
            c.n["input_grad"] += 1
            return grad(*a, **k)
        torch.autograd.grad = counting_grad
        n_samples = 32 * steps // (2 if replays_case else 1)   # Free AT: 2 epochs x 2 replays
        try:
            res = Trainer(cfg, engine, method, Data(cfg, dist.rank, dist.world_size, n=n_samples, global_bs=32),
                          run_dir=run).fit()
        finally:
            torch.autograd.grad = grad
        sd = engine.consolidated_state_dict()
        losses = [r["loss"] for r in read_log(run) if "loss" in r] if dist.rank == 0 else []
        counts = {k: int(v) for k, v in zip(c.n, D.all_reduce_sum([float(v) for v in c.n.values()]))}
        results[name] = {"losses": torch.tensor(losses, dtype=torch.float64), "state": sd,
                         "steps": res["global_step"], "counts": counts, "method_state": method.state_dict()}
    torch.save(results, f"{out}.rank{dist.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main()
