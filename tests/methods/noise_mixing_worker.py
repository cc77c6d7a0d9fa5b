"""One rank of the methods run (started as a real process by tests/methods/test_noise_mixing_dist.py).

usage: noise_mixing_worker.py OUT_PREFIX CASES
For each case (comma-separated names of CASES below) builds the run's config through the
loader (validation included), the shipped method (`create_method`, `method.extra` composed),
the shipped model (`create_model`: PNI / VIB / DropBlock options, the neural SDE) and the DeepSpeed engine,
trains STEPS optimizer steps at global batch 32 (micro-batch 16: 1 rank accumulates 2,
2 ranks take one each) on in-memory digits, and saves per case: the global losses (rank 0),
the consolidated weights, and what the probes saw. Probes are test-only observer add-ons
(`_record_in`, `_record_out`, `_paint`) composed around the method under test, plus a forward hook on DropBlock.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import torch  # noqa: E402

from engine_helpers import Data, make_cfg, read_log  # noqa: E402
from scaletrain.engine import Trainer, build_engine, cleanup, init_distributed  # noqa: E402
from scaletrain.methods import Event, Method, create_method, register_method  # noqa: E402
from scaletrain.models import create_model  # noqa: E402
from scaletrain.models.dropblock import DropBlock2d  # noqa: E402
from scaletrain.models.pni import pni_layers  # noqa: E402

STEPS = 3
SEEN = {}


class Record(Method):
    """Test-only observer: stores the batch it sees under its tag, changes nothing."""
    events = (Event.BEFORE_FORWARD,)
    tag = ""

    def before_forward(self, x, y, ctx):
        SEEN.setdefault(self.tag, []).append((x.detach().clone(), y.detach().clone(),
                                              ctx.sample_index.clone()))
        return x, y


@register_method("_record_in")
class RecordIn(Record):
    name, tag = "_record_in", "in"


@register_method("_record_out")
class RecordOut(Record):
    name, tag = "_record_out", "out"


@register_method("_paint")
class Paint(Method):
    """Test-only: every image becomes the constant (global sample index + 1) / 1000, so each pixel
    of a mixed / erased / noised batch says where it came from."""
    name = "_paint"
    events = (Event.BEFORE_FORWARD,)

    def before_forward(self, x, y, ctx):
        v = (ctx.sample_index.to(x.device, torch.float32) + 1) / 1000
        return v.view(-1, 1, 1, 1).expand_as(x).contiguous(), y


def around(name, **kw):
    inner = ", ".join(f"{k}: {v}" for k, v in kw.items())
    return (f"method.extra=[{{name: _paint}}, {{name: _record_in}}, {{name: {name}, kwargs: {{{inner}}}}}, "
            "{name: _record_out}]")


# eval-mode attacks read BatchNorm running statistics, which 1 rank updates between its two
# accumulated micro-batches and 2 ranks do not: adversarial cases use the model without BatchNorm
NO_BN = "model.kwargs.batchnorm=false"
CASES = {
    "noise": ["method.name=standard", around("gaussian_noise", sigma=0.3)],
    "cutmix": ["method.name=standard", around("cutmix", alpha=1.0)],
    "mixup": ["method.name=standard", around("mixup", alpha=0.4)],
    "cutout": ["method.name=standard", around("cutout", size=4)],
    "pni": ["method.name=pgd_at", "method.attack.eps=0.2", "method.attack.steps=2", "model.pni=channel",
            "optim.weight_decay=0.05", "method.extra=[{name: pni}]", NO_BN],
    "dropblock": ["method.name=standard", "model.kwargs.dropblock_prob=0.2", "model.kwargs.dropblock_size=3"],
    "vib": ["method.name=standard", "model.vib_dim=8", "method.extra=[{name: vib, kwargs: {beta: 0.01}}]"],
    "sde": ["method.name=standard", "model.name=sde_cnn", "model.width=4", "model.kwargs={sigma: 0.3, steps: 2}"],
    "penalty": ["method.name=standard", "method.extra=[{name: confidence_penalty, kwargs: {beta: 0.5}}]"],
    "huber": ["method.name=huber", "method.huber_delta=0.5"],
    "trades_cutmix": ["method.name=trades", "method.attack.eps=0.2", "method.attack.steps=2", NO_BN,
                      "method.extra=[{name: cutmix, kwargs: {alpha: 1.0}}]"],
    "pgd_cutmix_penalty": ["method.name=pgd_at", "method.attack.eps=0.2", "method.attack.steps=2", NO_BN,
                           "method.extra=[{name: cutmix, kwargs: {alpha: 1.0}}, "
                           "{name: confidence_penalty, kwargs: {beta: 0.2}}]"],
}


def main():
    prefix, cases = sys.argv[1], sys.argv[2].split(",")
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", 1))
    results, dist = {}, None
    for case in cases:
        SEEN.clear()
        run = f"{prefix}-{case}-w{world}"
        cfg = make_cfg(os.path.dirname(run), f"name={os.path.basename(run)}", "engine.backend=deepspeed",
                       "engine.global_batch_size=32", "model.name=digits_cnn", "optim.name=sgd", "optim.lr=0.05",
                       *CASES[case])
        dist = dist or init_distributed(cfg)
        torch.manual_seed(0)
        model = create_model(cfg.model)
        engine = build_engine(cfg, model, dist)
        drops = []
        for m in engine.module.modules():
            if isinstance(m, DropBlock2d):
                m.register_forward_hook(lambda mod, inp, out: drops.append(
                    (float(((inp[0] != 0) & (out == 0)).sum()), float((inp[0] != 0).sum()))) if mod.training else None)
        res = Trainer(cfg, engine, create_method(cfg.method), Data(cfg, dist.rank, dist.world_size, n=32 * STEPS),
                      run_dir=run).fit()
        log = read_log(run) if dist.rank == 0 else []
        out = {"steps": res["global_step"], "losses": torch.tensor([r["loss"] for r in log], dtype=torch.float64),
               "log": log, "state": engine.consolidated_state_dict(), "seen": dict(SEEN), "drops": drops}
        if case == "pni":
            alphas = {id(m.pni_alpha) for m in pni_layers(engine.module)}
            out["groups"] = [(g["weight_decay"], sorted(id(p) in alphas for p in g["params"]))
                             for g in engine.optimizer.param_groups]
        results[case] = out
    torch.save(results, f"{prefix}.w{world}.rank{dist.rank}.pt")
    cleanup()


if __name__ == "__main__":
    main()
