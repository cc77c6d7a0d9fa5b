"""One rank of the zoo's distributed smoke run (started as a real process by tests/models).

usage: zoo_worker.py OUT_DIR
For every entry of SPECS: build the registered model from config, wrap it in the DeepSpeed
engine (the entry's ZeRO stage / precision / sync_bn), train 3 optimizer steps of PGD-AT
(1 attack step: the attack's input gradients go through each model) on digits resized to the
model's input size, with 2 ranks x 8 samples per global batch. Saves per model: consolidated
weights before/after, the logged losses, buffers of this rank, to OUT_DIR/<model>.rank<r>.pt.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine_helpers import Data, ShardedLoader, read_log  # noqa: E402
from scaletrain.config import load_config  # noqa: E402
from scaletrain.engine import Trainer, build_engine, cleanup, init_distributed  # noqa: E402
from scaletrain.methods import create_method  # noqa: E402
from scaletrain.models import create_model  # noqa: E402

# (tag, image side, overrides): tiny widths; every model of the zoo (and the solver options)
SPECS = [
    ("mlp", 8, ["model.name=mlp", "model.width=16", "engine.zero_stage=3", "engine.precision=bf16"]),
    ("digits_cnn", 8, ["model.name=digits_cnn", "model.width=4", "engine.zero_stage=2"]),
    ("digits_cnn_syncbn", 8, ["model.name=digits_cnn", "model.width=4", "engine.zero_stage=2", "model.sync_bn=true"]),
    ("wong_mnist", 8, ["model.name=wong_mnist", "model.width=4", "engine.zero_stage=3"]),
    ("madry_mnist", 8, ["model.name=madry_mnist", "model.width=4", "model.kwargs={hidden: 32}",
                        "engine.zero_stage=3", "engine.precision=bf16"]),
    ("trades_smallcnn", 16, ["model.name=trades_smallcnn", "model.width=4", "model.kwargs={hidden: 16}",
                             "engine.zero_stage=3"]),
    ("preact_resnet18", 8, ["model.name=preact_resnet18", "model.width=4", "engine.zero_stage=3",
                            "engine.precision=bf16", "model.sync_bn=true"]),
    ("wrn_28_10", 8, ["model.name=wrn_28_10", "model.width=1", "engine.zero_stage=3", "model.sync_bn=true"]),
    ("node_cnn", 8, ["model.name=node_cnn", "model.width=4", "model.kwargs={solver: rk4, steps: 2}",
                     "engine.zero_stage=3", "engine.precision=bf16"]),
    ("node_cnn_dopri5_adjoint", 8, ["model.name=node_cnn", "model.width=4",
                                    "model.kwargs={solver: dopri5, adjoint: true, rtol: 0.01, atol: 0.01}",
                                    "engine.zero_stage=2"]),
    ("resnet_ode", 8, ["model.name=resnet_ode", "model.width=4", "model.kwargs={depth: 3, antisymmetric: true}",
                       "engine.zero_stage=3"]),
    ("sde_cnn", 8, ["model.name=sde_cnn", "model.width=4", "model.kwargs={sigma: 0.1, steps: 2}",
                    "engine.zero_stage=3", "engine.precision=bf16"]),
    ("deq_cnn", 8, ["model.name=deq_cnn", "model.width=4", "model.kwargs={max_iter: 8, backward_max_iter: 8}",
                    "engine.zero_stage=3"]),
]


class ResizedData(Data):
    def __init__(self, cfg, rank, world, side):
        super().__init__(cfg, rank, world, n=48, global_bs=16)
        if side != 8:
            self.x = F.interpolate(self.x, size=(side, side), mode="bilinear", align_corners=False)

    def train_loader(self, epoch, stage):
        return ShardedLoader(self.x, self.y, self.gbs, self.cfg.data.batch_size, self.rank, self.world, epoch, 0)


def main():
    out = sys.argv[1]
    only = set(sys.argv[2:])
    torch.set_num_threads(1)
    dist = None
    for tag, side, over in SPECS:
        if only and tag not in only:
            continue
        cfg = load_config(None, ["data.batch_size=8", "train.epochs=1", "train.log_every=1", "train.progress=false",
                                 "optim.name=adam", "optim.lr=0.01", "optim.schedule=constant", f"out_dir={out}",
                                 f"name={tag}", "tracking.wandb=false", "method.name=pgd_at",
                                 "method.attack.steps=1", "method.attack.eps=0.1", f"model.image_size={side}", *over])
        dist = dist or init_distributed(cfg)
        torch.manual_seed(0)
        model = create_model(cfg.model)
        before = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        engine = build_engine(cfg, model, dist)
        run = os.path.join(out, tag)
        res = Trainer(cfg, engine, create_method(cfg.method), ResizedData(cfg, dist.rank, dist.world_size, side),
                      run_dir=run).fit()
        after = engine.consolidated_state_dict()
        buffers = {k: v.detach().float().clone() for k, v in engine.module.named_buffers()}
        losses = [r["loss"] for r in read_log(run)] if dist.rank == 0 else []
        torch.save({"before": before, "after": after, "buffers": buffers, "losses": losses,
                    "steps": res["global_step"], "module": type(engine.module).__name__,
                    "bn_types": sorted({type(m).__name__ for m in engine.module.modules() if "BatchNorm" in
                                        type(m).__name__})},
                   os.path.join(out, f"{tag}.rank{dist.rank}.pt"))
        print(f"rank {dist.rank}: {tag} ok", flush=True)
    cleanup()


if __name__ == "__main__":
    main()
