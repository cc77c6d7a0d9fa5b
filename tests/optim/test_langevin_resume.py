"""Kill-and-resume continues the Langevin noise sequence exactly: a circle-constrained BAOAB run
(momentum, auxiliary xi, step counter and temperature schedule in the checkpoint) under DeepSpeed
ZeRO-2, SIGKILLed right after a mid-epoch checkpoint and resumed, ends bit-identical to an
uninterrupted run. Uses the engine's resume worker (real process, real SIGKILL)."""
import json
import os
import subprocess
import sys

import pytest
import torch

WORKER = os.path.join(os.path.dirname(__file__), "..", "engine", "resume_worker.py")
OVERRIDES = ["engine.backend=deepspeed", "engine.zero_stage=2", "optim.name=circle", "optim.lr=0.1",
             "optim.schedule=cosine", "optim.langevin.temperature=1e-3", "optim.langevin.radius=0.2",
             "optim.langevin.temperature_schedule=cosine", "train.epochs=2", "train.ckpt_every=5"]


def _run(run_dir, overrides, kill_at=None):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "KILL_AT"):
        env.pop(k, None)
    if kill_at is not None:
        env["KILL_AT"] = str(kill_at)
    return subprocess.run([sys.executable, WORKER, str(run_dir), *overrides], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_resume_continues_the_noise_sequence(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert _run(full, OVERRIDES).returncode == 0
    r = _run(broken, OVERRIDES, kill_at=5)
    assert r.returncode == -9, r.stderr[-2000:]
    r = _run(broken, OVERRIDES + ["resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(broken / "model.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = lambda d: {r["step"]: r for r in map(json.loads, open(d / "train_log.jsonl"))}  # noqa: E731
    la, lb = rows(full), rows(broken)
    assert sorted(la) == sorted(lb) and max(la) > 5
    for s in la:
        assert la[s]["loss"] == lb[s]["loss"] and la[s]["temperature"] == lb[s]["temperature"], s
    assert la[max(la)]["temperature"] == 0.0 and la[1]["temperature"] > 0
