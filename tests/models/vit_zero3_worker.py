"""One rank of the ViT ZeRO-3 test: the product engine (build_engine, zero_stage=3) around a
small ViT with 0.5 random token masking; PGD on engine.module vs an identical plain copy, then
training steps at the built resolution and at half of it. Writes OUT.rankR.json."""
import copy
import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from scaletrain.attacks import create_attack  # noqa: E402
from scaletrain.config import load_config  # noqa: E402
from scaletrain.engine import build_engine, cleanup, init_distributed  # noqa: E402
from scaletrain.models import create_model  # noqa: E402


def main(out):
    torch.set_num_threads(1)
    cfg = load_config(None, ["model.name=vit", "model.image_size=16", "model.in_channels=1",
                             "model.kwargs={dim: 32, depth: 2, heads: 2, patch_size: 4}",
                             "engine.zero_stage=3", "engine.workers=2", "data.batch_size=8",
                             "optim.lr=0.003", "optim.schedule=constant",
                             "engine.deepspeed={zero_optimization: {stage3_param_persistence_threshold: 0}}"])
    dist = init_distributed(cfg)
    torch.manual_seed(0)
    model = create_model(cfg.model)
    plain = copy.deepcopy(model)
    engine = build_engine(cfg, model, dist)
    from scaletrain.engine.optim import LRSchedule, Segment
    engine.set_schedule(LRSchedule("constant", [Segment(steps=100, lr=3e-3)]))
    mod = engine.module
    res = {"partitioned": all(p.numel() == 0 for p in mod.parameters())}
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(8, 1, 16, 16, generator=g), torch.arange(8) % 10
    for m in (mod, plain):
        m.set_token_keep(0.5, "random")
        m.draw_token_mask(8, generator=torch.Generator().manual_seed(9))
        m.eval()
    atk = create_attack("pgd", eps=0.1, steps=3)
    a = atk(mod, x, y, generator=torch.Generator().manual_seed(1))
    b = atk(plain, x, y, generator=torch.Generator().manual_seed(1))
    res["pgd_max_abs_diff"] = float((a - b).abs().max())
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(mod(xg), y), xg)
    per_patch = gx.abs().reshape(8, 1, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(8, 16, -1).sum(-1)
    kept = torch.zeros(8, 16, dtype=torch.bool).scatter_(1, mod._mask, True)
    res["grad_kept_nonzero"] = bool((per_patch[kept] > 0).all())
    res["grad_dropped_zero"] = bool((per_patch[~kept] == 0).all())
    with torch.no_grad():
        res["loss_abs_diff"] = abs(float(F.cross_entropy(mod(a), y)) - float(F.cross_entropy(plain(a), y)))
        res["loss_before"] = float(F.cross_entropy(mod(a), y))
    engine.train()
    for i in range(6):
        xi = a if i % 2 == 0 else F.interpolate(a, size=(8, 8), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(engine.forward(xi), y)
        engine.backward(loss)
        engine.step()
    mod.eval()
    with torch.no_grad():
        res["loss_after"] = float(F.cross_entropy(mod(a), y))
    with open(f"{out}.rank{dist.rank}.json", "w") as f:
        json.dump(res, f)
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
