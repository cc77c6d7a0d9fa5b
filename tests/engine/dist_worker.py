"""One rank of an engine equivalence run (started as a real process by tests).

usage: dist_worker.py OUT_FILE BACKEND ZERO_STAGES STEPS [overrides...]
Env: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as from torchrun.
For each ZeRO stage in ZERO_STAGES (comma-separated) builds a fresh model (seed 0) and engine,
trains STEPS optimizer steps of PGD-AT at global batch 32, and saves the per-step global losses
and the consolidated weights of every rank to OUT_FILE.rank<r>.pt.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import torch  # noqa: E402

from engine_helpers import Data, PGDATMethod, make_cfg  # noqa: E402
from scaletrain.engine import Trainer, build_engine, cleanup, init_distributed  # noqa: E402
from scaletrain.models import create_model  # noqa: E402


def main():
    out, backend, stages, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    results = {}
    dist = None
    for z in [int(s) for s in stages.split(",")]:
        run = os.path.join(os.path.dirname(out), f"{backend}-z{z}-w{os.environ.get('WORLD_SIZE', 1)}")
        cfg = make_cfg(os.path.dirname(run), f"name={os.path.basename(run)}", f"engine.backend={backend}",
                       f"engine.zero_stage={z}", "engine.global_batch_size=32", "model.name=mlp", "model.width=64",
                       "optim.name=adam", "optim.lr=0.01", "optim.schedule=cosine", "engine.grad_clip=1.0",
                       *sys.argv[5:])
        dist = dist or init_distributed(cfg)
        torch.manual_seed(0)
        engine = build_engine(cfg, create_model(cfg.model), dist)
        data = Data(cfg, dist.rank, dist.world_size, n=32 * steps)
        res = Trainer(cfg, engine, PGDATMethod(eps=0.2, steps=3), data, run_dir=run).fit()
        sd = engine.consolidated_state_dict()
        # the module's own (possibly partitioned) params on this rank, to see that ranks agree
        local = {k: v.detach().clone() for k, v in engine.module.state_dict().items()} if z < 3 else {}
        if dist.rank == 0:
            from engine_helpers import read_log
            losses = [r["loss"] for r in read_log(run)]
        else:
            losses = []
        # ZeRO partition map: every slice matches the full weights, and counts which elements
        # this rank's optimizer holds (summed over ranks by the test)
        cover = {k: torch.zeros(v.numel(), dtype=torch.int32) for k, v in sd.items()
                 if k in dict(engine.module.named_parameters())}
        for s in engine.param_slices():
            got = s.tensor.detach().view(-1)[s.offset:s.offset + s.numel].float()
            want = sd[s.name].view(-1)[s.param_offset:s.param_offset + s.numel]
            assert torch.equal(got, want), (z, s.name)
            # the tensor the client optimizer steps on (ZeRO-3 swaps its flat sub-group partitions
            # into param_groups only for the duration of step())
            held = ([t for g in engine.optimizer.param_groups for t in g["params"]] if z < 3
                    else list(engine.ds.optimizer.fp32_partitioned_groups_flat))
            assert any(s.tensor is t for t in held), (z, s.name)
            cover[s.name][s.param_offset:s.param_offset + s.numel] += 1
        results[z] = {"losses": torch.tensor(losses, dtype=torch.float64), "state": sd, "local": local,
                      "steps": res["global_step"], "cover": cover}
    torch.save(results, f"{out}.rank{dist.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main()
