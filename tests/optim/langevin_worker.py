"""One rank of a Langevin equivalence run (started as a real process by tests/optim).

usage: langevin_worker.py OUT_FILE BACKEND PLAN STEPS [overrides...]
PLAN: 'sgld:0,1,2;circle:0,2' = optimizer: ZeRO stages; 'sgd+hebbian:0,2' trains with method hebbian
(1 Hebbian epoch, then 1 supervised epoch with the first layer frozen). For every (optimizer, stage) builds a fresh
model (seed 0) and engine, trains STEPS optimizer steps of cross-entropy at global batch 32 and
saves the consolidated weights, the per-step logs and, for constrained optimizers, the largest
constraint violation of the consolidated weights after every step, to OUT_FILE.rank<r>.pt.
"""
import os
import sys

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import torch  # noqa: E402

from engine_helpers import CEMethod, Data, make_cfg, read_log, shipped_method  # noqa: E402
from scaletrain.engine import Trainer, build_engine, cleanup, init_distributed  # noqa: E402
from scaletrain.models import create_model  # noqa: E402


def violation(engine, sd):
    """max over constrained weights of (|w| - r)_+ (circle) or |W^T W - I| (orthogonal)."""
    opt = engine.optimizer
    worst = 0.0
    for name in opt.param_order:
        if not opt.rule.constrained(opt, name):
            continue
        w = sd[name].double()
        if opt.registry_name == "circle":
            worst = max(worst, float((w.abs() - opt.radius_of(name)).clamp_min(0).max()))
        else:
            m = w.reshape(w.shape[0], -1)
            m = m if m.shape[0] > m.shape[1] else m.T
            worst = max(worst, float((m.T @ m - torch.eye(m.shape[1], dtype=m.dtype)).abs().max()))
    return worst


class ConstraintProbe:
    """After every logged optimizer step (log_every=1): the consolidated weights' violation;
    at every epoch end: the consolidated first-layer weight."""

    def __init__(self):
        self.worst, self.first_layer = [], []

    def on_epoch_end(self, trainer, metrics):
        self.first_layer.append(trainer.engine.consolidated_state_dict()["features.0.weight"])

    def on_log(self, trainer, row, step):
        e = trainer.engine
        if getattr(e.optimizer, "constrained", False):
            self.worst.append(violation(e, e.consolidated_state_dict()))


def main():
    out, backend, plan, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    results, dist = {}, None
    for item in plan.split(";"):
        spec, stages = item.split(":")
        opt_name, _, method_name = spec.partition("+")
        for z in [int(s) for s in stages.split(",")]:
            run = os.path.join(os.path.dirname(out), f"{spec}-{backend}-z{z}-w{os.environ.get('WORLD_SIZE', 1)}")
            cfg = make_cfg(os.path.dirname(run), f"name={os.path.basename(run)}", f"engine.backend={backend}",
                           f"engine.zero_stage={z}", "engine.global_batch_size=32", "model.name=digits_cnn",
                           "model.width=4", "model.kwargs={batchnorm: false, hidden: 32}", f"optim.name={opt_name}",
                           "optim.lr=0.1", "optim.schedule=cosine", "optim.langevin.temperature=1e-3",
                           "optim.langevin.temperature_schedule=linear", "optim.langevin.radius=0.15",
                           "optim.langevin.radius_first=0.3", "seed=5", *sys.argv[5:],
                           *(["train.epochs=2"] if method_name else []))
            dist = dist or init_distributed(cfg)
            torch.manual_seed(0)
            engine = build_engine(cfg, create_model(cfg.model), dist)
            probe = ConstraintProbe()
            method = CEMethod() if not method_name else shipped_method(
                f"method.name={method_name}", "method.kwargs={hebbian_epochs: 1, eps: 0.1, k: 2, p: 3.0}")
            res = Trainer(cfg, engine, method, Data(cfg, dist.rank, dist.world_size, n=32 * steps),
                          run_dir=run, hooks=[probe]).fit()
            sd = engine.consolidated_state_dict()
            rows = read_log(run) if dist.rank == 0 else []
            results[f"{spec}:{z}"] = {"first_layer": probe.first_layer,
                "state": {k: v for k, v in sd.items() if k in dict(engine.module.named_parameters())},
                "losses": torch.tensor([r["loss"] for r in rows], dtype=torch.float64),
                "temperature": torch.tensor([r.get("temperature", 0.0) for r in rows], dtype=torch.float64),
                "opt_violation": torch.tensor([r.get("constraint_violation", 0.0) for r in rows], dtype=torch.float64),
                "violation": torch.tensor(probe.worst, dtype=torch.float64), "steps": res["global_step"]}
    torch.save(results, f"{out}.rank{dist.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main()
