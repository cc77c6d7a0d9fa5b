"""A small per-rank worker for Ray tests (same signature as scaletrain.run.train_worker).

Digits in memory, a tiny MLP, PGD-AT; records its pid so a test can kill it.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine"))

import torch  # noqa: E402

from engine_helpers import Data, PGDATMethod  # noqa: E402
from scaletrain.engine import Trainer, build_engine, init_distributed  # noqa: E402
from scaletrain.models import create_model  # noqa: E402


class _Slow:
    """Keeps steps slow enough that a test can kill a worker mid-run."""

    def on_log(self, trainer, metrics, step):
        time.sleep(float(os.environ.get("ST_TEST_STEP_SLEEP", "0")))


def tiny_worker(cfg, run_dir=None, hooks=None):
    dist = init_distributed(cfg)
    try:
        os.makedirs(os.path.join(run_dir, "pids"), exist_ok=True)
        with open(os.path.join(run_dir, "pids", f"rank{dist.rank}-{os.getpid()}"), "w") as f:
            f.write(str(os.getpid()))
        torch.set_num_threads(1)
        torch.manual_seed(cfg.seed)
        engine = build_engine(cfg, create_model(cfg.model), dist)
        from scaletrain.engine.hooks import active_hooks
        trainer = Trainer(cfg, engine, PGDATMethod(eps=0.2, steps=2), Data(cfg, dist.rank, dist.world_size, n=256),
                          run_dir=run_dir, hooks=active_hooks() + [_Slow()])
        res = trainer.fit()
        return {"train": {k: v for k, v in res.items() if isinstance(v, (int, float, str)) or v is None},
                "pid": os.getpid()}
    finally:
        dist.cleanup()
