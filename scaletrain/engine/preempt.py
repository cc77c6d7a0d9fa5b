"""Preemption: stop at a step boundary on SIGTERM / SIGINT / SIGUSR1, checkpoint, exit 75.

The contract (docs/engine.md, "Preemption and elastic resume"):

* The first SIGTERM, SIGINT or SIGUSR1 (SLURM's `--signal=B:USR1@120` pre-timeout signal)
  only sets a flag: the current optimizer step finishes on every rank.
* At every optimizer-step boundary all ranks all-reduce two flags -- "a rank was signalled
  (or the stop file exists)" and "rank 0's clock says a time-based checkpoint is due" -- so
  every rank takes the same decision at the same step. The all-reduce runs on a gloo (CPU)
  group, so on GPUs it never synchronises the CUDA stream.
* On stop, the ranks write one checkpoint together (atomic: checkpoint.py), its meta.json
  records the interruption, rank 0 prints one line, W&B gets `preempted=1`, and the process
  exits with `EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"; resume with `resume=auto`).
* `train.preempt_grace_s` bounds the whole stop: a watchdog exits with 128+signal if the
  step and the checkpoint have not finished by then (the previous checkpoint stays valid).
* A second signal exits at once with 128+signal (no new checkpoint; the previous one and any
  half-written `.tmp-*` folder are handled by the atomic checkpoint layout).
* Stop file: `<run_dir>/STOP` (any content) has the same effect as a signal. Rank 0 looks for
  it at most once per second. Ray Train runs the training function in a thread, where Python
  cannot install signal handlers, so under `engine.launcher=ray` the driver catches the
  signal and writes this file (orchestrate/ray_train.py).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Optional, Tuple

import torch
import torch.distributed as tdist

from ..errors import EXIT_PREEMPTED, Preempted  # noqa: F401 (re-exported)

STOP_FILE = "STOP"
SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class SignalLatch:
    """Process-wide: the first handled signal sets `reason`; the second exits at once.

    Installed only from the main thread (Python's rule); elsewhere `install` is a no-op and the
    stop file is the way in."""

    def __init__(self):
        self.reason: Optional[str] = None
        self.grace_s: float = 0.0
        self._old = {}
        self._timer: Optional[threading.Timer] = None
        self.installed = False
        self.on_trigger = None   # callable(reason): e.g. the Ray driver writes the stop file

    def install(self, grace_s: float, on_trigger=None) -> bool:
        self.grace_s = float(grace_s)
        if on_trigger is not None:
            self.on_trigger = on_trigger
        if self.installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        for name in SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.signal(sig, self._handle)
        self.installed = True
        return True

    def reset(self) -> None:
        """Forget a request (the run it was for has ended) and stop the grace watchdog."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reason = None

    def uninstall(self) -> None:
        self.reset()
        if self.installed and threading.current_thread() is threading.main_thread():
            for sig, old in self._old.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old, self.installed, self.reason, self.on_trigger = {}, False, None, None

    def trigger(self, reason: str, signum: int = signal.SIGTERM) -> None:
        if self.reason is not None:
            return
        self.reason = reason
        if self.on_trigger is not None:
            self.on_trigger(reason)
        if self.grace_s > 0:  # the watchdog: never overrun the scheduler's grace period
            self._timer = threading.Timer(self.grace_s, self._expire, args=(signum,))
            self._timer.daemon = True
            self._timer.start()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None:
            print(f"scaletrain: second signal ({name}): exiting now without a checkpoint "
                  f"(exit {128 + signum})", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        print(f"scaletrain: {name} received: finishing the current step, then checkpointing and exiting "
              f"(exit {EXIT_PREEMPTED}); send it again to exit at once", file=sys.stderr, flush=True)
        self.trigger(name, signum)

    def _expire(self, signum: int) -> None:
        print(f"scaletrain: train.preempt_grace_s={self.grace_s:g} s passed before the interruption checkpoint "
              f"was complete: exiting (exit {128 + signum}); the previous checkpoint stays valid",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)


LATCH = SignalLatch()


class StopCoordinator:
    """Per-run: the synchronised stop / time-checkpoint decision at step boundaries."""

    def __init__(self, run_dir: str, ckpt_every_minutes: float, grace_s: float, rank: int,
                 world_size: int, handle_signals: bool = True):
        self.run_dir, self.rank, self.world = run_dir, rank, world_size
        self.every_s = float(ckpt_every_minutes) * 60.0
        self.handles_signals = LATCH.install(grace_s) if handle_signals else False
        self.last_ckpt_t = time.monotonic()
        self._file_checked = 0.0
        self._group = None
        if self.world > 1 and tdist.is_initialized() and tdist.get_backend() != "gloo":
            self._group = tdist.new_group(backend="gloo")  # collective: every rank builds it

    def _stop_file(self) -> Optional[str]:
        now = time.monotonic()
        if now - self._file_checked < 1.0:
            return None
        self._file_checked = now
        path = os.path.join(self.run_dir, STOP_FILE)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                return (f.read().strip() or "stop file").splitlines()[0][:60]
        except OSError:
            return "stop file"

    def poll(self) -> Tuple[bool, bool]:
        """(stop, time checkpoint due): identical on every rank. Call at every step boundary."""
        if LATCH.reason is None and self.rank == 0:
            found = self._stop_file()
            if found is not None:
                LATCH.trigger(found)
        flags = [1.0 if LATCH.reason is not None else 0.0,
                 1.0 if (self.rank == 0 and self.every_s > 0 and
                         time.monotonic() - self.last_ckpt_t >= self.every_s) else 0.0]
        if self.world > 1:
            t = torch.tensor(flags, dtype=torch.float64)
            tdist.all_reduce(t, group=self._group)
            flags = t.tolist()
        return flags[0] > 0, flags[1] > 0

    def saved(self) -> None:
        self.last_ckpt_t = time.monotonic()

    @property
    def reason(self) -> str:
        return LATCH.reason or "a signal on another rank"

    def close(self) -> None:
        if self.handles_signals:
            LATCH.uninstall()
        else:
            LATCH.reset()
        if self._group is not None:
            tdist.destroy_process_group(self._group)
            self._group = None


def record_interruption(run_dir: str, reason: str, step: int, checkpoint: Optional[str]) -> None:
    """`<run_dir>/interrupted.json` (rank 0): the last interruption of this run folder (kept)."""
    path = os.path.join(run_dir, "interrupted.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"reason": reason, "step": step, "checkpoint": checkpoint, "time": time.time(),
                   "exit_code": EXIT_PREEMPTED}, f, indent=1)
    os.replace(path + ".tmp", path)


def request_stop(run_dir: str, reason: str) -> None:
    """Ask a running job to stop like a signal would (writes the stop file)."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, STOP_FILE), "w") as f:
        f.write(reason + "\n")


def clear_stop(run_dir: str) -> None:
    for name in (STOP_FILE,):
        try:
            os.remove(os.path.join(run_dir, name))
        except FileNotFoundError:
            pass
