"""A 1-rank training run for the kill-and-resume test, with the SHIPPED method of the config.

usage: resume_worker.py RUN_DIR [overrides...]; env KILL_AT=<step>: SIGKILL this process right
after the checkpoint of that optimizer step is complete (a real, unclean death).
env FORCE_COLLAPSE_AT=<step>: the fast_at guard's probe reports a catastrophic-overfitting
collapse (PGD accuracy 0, FGSM accuracy 1) at that step, so the guard fires and responds.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
import torch  # noqa: E402

from engine_helpers import Data, Killer, force_collapse_at, make_cfg  # noqa: E402
from scaletrain.engine import Trainer, build_engine, cleanup, init_distributed  # noqa: E402
from scaletrain.methods import create_method  # noqa: E402
from scaletrain.models import create_model  # noqa: E402


def main():
    run_dir = sys.argv[1]
    torch.set_num_threads(1)
    cfg = make_cfg(os.path.dirname(run_dir), f"name={os.path.basename(run_dir)}", *sys.argv[2:])
    dist = init_distributed(cfg)
    torch.manual_seed(cfg.seed)
    engine = build_engine(cfg, create_model(cfg.model), dist)
    hooks = [Killer(int(os.environ["KILL_AT"]))] if os.environ.get("KILL_AT") else []
    if os.environ.get("FORCE_COLLAPSE_AT"):
        force_collapse_at(int(os.environ["FORCE_COLLAPSE_AT"]))
    Trainer(cfg, engine, create_method(cfg.method), Data(cfg, 0, 1, n=128),
            run_dir=run_dir, hooks=hooks).fit()
    cleanup()


if __name__ == "__main__":
    main()
