"""`scaletrain train` (run.train: data, model, method, engine, trainer, evaluation, report) with a
hook that SIGKILLs the process right after the checkpoint of optimizer step KILL_AT is complete.

usage: stages_worker.py CONFIG.yaml [overrides...]   (env KILL_AT=<step>, optional)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from engine_helpers import Killer  # noqa: E402
from scaletrain.config import load_config  # noqa: E402
from scaletrain.engine import use_hooks  # noqa: E402
from scaletrain.run import train  # noqa: E402


if __name__ == "__main__":
    cfg = load_config(sys.argv[1], sys.argv[2:])
    hooks = [Killer(int(os.environ["KILL_AT"]))] if os.environ.get("KILL_AT") else []
    with use_hooks(*hooks):
        train(cfg)
