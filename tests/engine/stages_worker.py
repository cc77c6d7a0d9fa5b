"""`scaletrain train` (run.train: data, model, method, engine, trainer, evaluation, report) with a
hook that SIGKILLs the process right after the checkpoint of optimizer step KILL_AT is complete.

usage: stages_worker.py CONFIG.yaml [overrides...]   (env KILL_AT=<step>, optional)
"""
import os
import signal
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
from scaletrain.config import load_config  # noqa: E402
from scaletrain.engine import use_hooks  # noqa: E402
from scaletrain.run import train  # noqa: E402


class Killer:
    def __init__(self, step):
        self.step = step

    def on_checkpoint(self, trainer, path, metrics):
        if trainer.engine.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    cfg = load_config(sys.argv[1], sys.argv[2:])
    hooks = [Killer(int(os.environ["KILL_AT"]))] if os.environ.get("KILL_AT") else []
    with use_hooks(*hooks):
        train(cfg)
