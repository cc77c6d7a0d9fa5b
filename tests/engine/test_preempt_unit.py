"""preempt.py in one process: the signal latch, the stop file, time-based checkpoint decisions,
the grace watchdog."""
import os
import signal
import subprocess
import sys
import time

import pytest

from scaletrain.engine.preempt import LATCH, STOP_FILE, StopCoordinator, clear_stop, request_stop


@pytest.fixture(autouse=True)
def _fresh_latch():
    LATCH.uninstall()
    yield
    LATCH.uninstall()


def test_signal_sets_the_latch_and_uninstall_restores_the_handler(tmp_path, capsys):
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopCoordinator(str(tmp_path), 0, 0, rank=0, world_size=1)
    assert stop.handles_signals and stop.poll() == (False, False)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert LATCH.reason == "SIGUSR1" and stop.poll() == (True, False) and stop.reason == "SIGUSR1"
    assert "SIGUSR1 received: finishing the current step" in capsys.readouterr().err
    stop.close()
    assert LATCH.reason is None and signal.getsignal(signal.SIGUSR1) == before


def test_stop_file_and_time_checkpoints(tmp_path):
    stop = StopCoordinator(str(tmp_path), 0.2 / 60, 0, rank=0, world_size=1, handle_signals=False)
    assert stop.poll() == (False, False)
    time.sleep(0.25)
    assert stop.poll() == (False, True)      # 0.2 s passed since the start
    stop.saved()
    assert stop.poll() == (False, False)      # the clock restarts at each checkpoint
    request_stop(str(tmp_path), "maintenance window")
    stop._file_checked = 0.0                  # (the file is looked at once a second)
    assert stop.poll()[0] and stop.reason == "maintenance window"
    stop.close()
    assert LATCH.reason is None
    clear_stop(str(tmp_path))
    assert not os.path.exists(tmp_path / STOP_FILE)
    # other ranks never read the file (rank 0 decides; the all-reduce tells the rest)
    request_stop(str(tmp_path), "x")
    assert StopCoordinator(str(tmp_path), 0, 0, rank=1, world_size=1, handle_signals=False).poll() == (False, False)


def test_grace_watchdog_exits_with_128_plus_signal():
    code = ("import time; from scaletrain.engine.preempt import LATCH; import signal; "
            "LATCH.install(0.3); LATCH.trigger('SIGTERM', signal.SIGTERM); time.sleep(30)")
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert "train.preempt_grace_s=0.3 s passed" in p.stderr and time.time() - t0 < 60
