"""SIGTERM to `scaletrain train engine.launcher=ray` (the real CLI, a real local Ray, 2 Ray Train
workers): Ray's training threads cannot take signals, so the driver writes the run's stop file,
the workers agree on a step, checkpoint and return (no FailureConfig restart), and the driver
exits 75 with the interruption on record."""
import json
import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine"))

from preempt_helpers import run_and_signal  # noqa: E402
from scaletrain.engine.checkpoint import list_checkpoints, read_meta  # noqa: E402
from scaletrain.errors import EXIT_PREEMPTED  # noqa: E402


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_sigterm_to_the_ray_driver_stops_workers_cleanly(tmp_path):
    pytest.importorskip("ray")
    os.environ.pop("RAY_ADDRESS", None)
    run_dir = tmp_path / "ray"
    rc, out = run_and_signal(1, [f"out_dir={tmp_path}", f"data.root={tmp_path}/data", "name=ray",
                                 "engine.launcher=ray", "engine.workers=2", "engine.max_failures=2",
                                 "train.epochs=20"], str(run_dir), at_step=2)
    assert rc == EXIT_PREEMPTED, out[-4000:]
    ckpts = list_checkpoints(str(run_dir / "checkpoints"))
    assert len(ckpts) == 1
    meta = read_meta(ckpts[0])
    assert meta["interrupted"] == "SIGTERM" and meta["world_size"] == 2 and meta["step"] < 20 * 12
    rec = json.loads((run_dir / "interrupted.json").read_text())
    assert rec["step"] == meta["step"] and rec["exit_code"] == EXIT_PREEMPTED
    assert not (run_dir / "model.pt").exists()
    assert "scaletrain train: interrupted by SIGTERM" in out
