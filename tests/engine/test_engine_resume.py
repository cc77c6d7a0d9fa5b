"""Kill-and-resume: a run SIGKILLed right after a mid-epoch checkpoint and restarted with
resume=auto ends bit-identical (weights and every logged loss) to an uninterrupted run,
on 1 CPU rank, with the shipped pgd_at (random starts from the trainer's per-sample
generator, keyed by step and global sample index, so they follow the restored step counter
and data-stream position)."""
import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)

CASES = {
    # DeepSpeed ZeRO-1, Adam + cosine, BatchNorm CNN: 8 steps/epoch, killed at step 5 (mid-epoch 0)
    "deepspeed_zero1": (["engine.backend=deepspeed", "engine.zero_stage=1", "optim.name=adam", "optim.lr=0.01",
                         "optim.schedule=cosine", "train.epochs=2", "train.ckpt_every=5"], 5),
    # plain PyTorch, two stages with their own lr and accumulation 2: killed at the stage-0 end checkpoint
    "torch_stages": (["engine.backend=torch", "engine.grad_accum=2", "optim.schedule=linear",
                      "optim.warmup_steps=2", "stages=[{name: weak, epochs: 1, lr: 0.1}, {name: strong, epochs: 1}]"],
                     4),
}


def _run(run_dir, overrides, kill_at=None):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "KILL_AT"):
        env.pop(k, None)
    if kill_at is not None:
        env["KILL_AT"] = str(kill_at)
    return subprocess.run([sys.executable, os.path.join(HERE, "resume_worker.py"), str(run_dir), *overrides],
                          env=env, capture_output=True, text=True, timeout=300)


def _log(run_dir):
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len({r["step"] for r in rows}) == len(rows), "duplicate steps in train_log.jsonl"
    return {r["step"]: r for r in rows}


@pytest.mark.dist
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", sorted(CASES))
def test_kill_and_resume_is_bit_identical(tmp_path, case):
    overrides, kill_at = CASES[case]
    full, broken = tmp_path / "full", tmp_path / "broken"
    r = _run(full, overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(broken, overrides, kill_at=kill_at)
    assert r.returncode == -9, f"expected SIGKILL, got {r.returncode}: {r.stderr[-2000:]}"
    assert not (broken / "model.pt").exists()
    ckpts = sorted(os.listdir(broken / "checkpoints"))
    assert ckpts[-1] == f"step_{kill_at:09d}", ckpts
    r = _run(broken, overrides + ["resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]

    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(broken / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{case}: {k} differs after resume"
    la, lb = _log(full), _log(broken)
    assert sorted(la) == sorted(lb) and max(la) > kill_at
    for step in la:
        assert la[step]["loss"] == lb[step]["loss"] and la[step]["lr"] == lb[step]["lr"], step
    meta = json.loads((broken / "checkpoints" / f"step_{max(la):09d}" / "meta.json").read_text())
    assert meta["step"] == max(la) and meta["complete"]
