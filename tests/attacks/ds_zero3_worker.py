"""One rank of the ZeRO-3 attack test (run by test_deepspeed_zero3.py, env RANK/WORLD_SIZE/...).

Builds a DeepSpeed ZeRO-3 engine around the digits CNN, runs PGD (and APGD, DeepFool)
on ``engine.module`` and on an identical plain copy, and writes what it saw to OUT.rankR.json."""
import copy
import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from scaletrain.attacks import create_attack  # noqa: E402
from scaletrain.config.schema import ModelConfig  # noqa: E402
from scaletrain.evaluate.toy import digits_split  # noqa: E402
from scaletrain.models import create_model  # noqa: E402


def main(weights, out):
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    rank = dist.get_rank()
    model = create_model(ModelConfig(width=16))
    model.load_state_dict(torch.load(weights, weights_only=True))
    plain = copy.deepcopy(model).eval()
    config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
              "train_batch_size": 8 * dist.get_world_size(), "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 3, "contiguous_gradients": True, "reduce_scatter": True,
                                    "overlap_comm": False,
                                    # partition every parameter (small ones are kept whole by default)
                                    "stage3_param_persistence_threshold": 0},
              "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                                      config=config)
    module = engine.module
    module.eval()
    partitioned = [tuple(p.shape) for p in module.parameters()]   # ZeRO-3: empty local shards
    _, (x, y) = digits_split()
    x, y = x[:48], y[:48]
    res = {"rank": rank, "partitioned_shapes": partitioned}
    for name, kw in [("pgd", dict(eps=0.1, steps=5)), ("apgd_ce", dict(eps=0.1, steps=5)),
                     ("deepfool", dict(eps=float("inf"), norm="l2", steps=10))]:
        atk = create_attack(name, **kw)
        a = atk(module, x, y, torch.Generator().manual_seed(7))
        b = atk(plain, x, y, torch.Generator().manual_seed(7))
        with torch.no_grad():
            acc_ds = (plain(a).argmax(1) == y).float().mean().item()
            acc_plain = (plain(b).argmax(1) == y).float().mean().item()
        res[name] = {"max_abs_diff": (a - b).abs().max().item(), "acc_ds": acc_ds, "acc_plain": acc_plain,
                     "linf": (a - x).abs().max().item()}
    res["grads_untouched"] = all(p.grad is None for p in module.parameters())
    res["shapes_after_attacks"] = [tuple(p.shape) for p in module.parameters()]
    # the engine still trains after being attacked: a step on adversarial inputs
    engine.train()
    x_adv = create_attack("pgd", eps=0.1, steps=3)(engine.module, x[:8], y[:8], torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(engine(x_adv), y[:8])
    engine.backward(loss)
    engine.step()
    res["train_loss"] = float(loss)
    res["shapes_after_step"] = [tuple(p.shape) for p in module.parameters()]
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
