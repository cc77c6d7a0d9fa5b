"""`scaletrain train` (the real CLI) that signals itself in the middle of a checkpoint write.

usage: preempt_write_worker.py AT N [overrides...]: when the checkpoint of optimizer step AT has
its DeepSpeed files on disk but no meta.json yet, send SIGTERM to this process N times."""
import os
import signal
import sys

from scaletrain.cli import main
from scaletrain.engine.engine import Engine

AT, TIMES = int(sys.argv[1]), int(sys.argv[2])
_save_state = Engine.save_state


def save_state(self, path):
    _save_state(self, path)
    if self.global_step == AT:
        for _ in range(TIMES):
            os.kill(os.getpid(), signal.SIGTERM)


Engine.save_state = save_state

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[3:]]))
