"""One rank of the sharded-evaluation test (env RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT).
Every rank reads the whole (small) evaluation stream; evaluate_model shards it by global batch."""
import json
import sys

import torch
import torch.distributed as dist

from scaletrain.config.schema import EvalConfig, ModelConfig
from scaletrain.evaluate import evaluate_model
from scaletrain.evaluate.toy import digits_split
from scaletrain.models import create_model


def config():
    return EvalConfig(attacks=["fgsm", "pgd", "apgd_ce"], eps=[0.0, 0.1, 0.2], pgd_steps=3, batch_size=16,
                      noise_sigmas=[0.3], certify={"sigma": 0.25, "n0": 10, "n": 100, "max_samples": 6})


def main(weights, out):
    torch.set_num_threads(1)
    import os
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model = create_model(ModelConfig(width=16))
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    _, (x, y) = digits_split()
    x, y = x[:90], y[:90]
    loader = [(x[i:i + 25], y[i:i + 25]) for i in range(0, 90, 25)]
    if len(sys.argv) > 3 and sys.argv[3] == "presharded":     # the mistake the suite must catch
        loader = loader[rank::world]
    try:
        report = evaluate_model(model, loader, config(), rank=rank, world_size=world, progress=False)
    except Exception as e:
        report = {"error": f"{type(e).__name__}: {e}", "seconds": 0, "world_size": world}
    report.pop("seconds")
    report.pop("world_size")
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(report, f)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
