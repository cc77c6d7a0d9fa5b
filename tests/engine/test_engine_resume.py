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

PGD = ["method.attack.eps=0.2", "method.attack.steps=2"]
CASES = {
    # DeepSpeed ZeRO-1, Adam + cosine, BatchNorm CNN: 8 steps/epoch, killed at step 5 (mid-epoch 0)
    "deepspeed_zero1": (PGD + ["engine.backend=deepspeed", "engine.zero_stage=1", "optim.name=adam",
                               "optim.lr=0.01", "optim.schedule=cosine", "train.epochs=2", "train.ckpt_every=5"],
                        5, {}),
    # plain PyTorch, two stages with their own lr and accumulation 2: killed at the stage-0 end checkpoint
    "torch_stages": (PGD + ["engine.backend=torch", "engine.grad_accum=2", "optim.schedule=linear",
                            "optim.warmup_steps=2", "stages=[{name: weak, epochs: 1, lr: 0.1}, {name: strong, epochs: 1}]"],
                     4, {}),
    # Free AT (m=2, DeepSpeed ZeRO-1): train.epochs=2 -> 1 data epoch x 8 batches x 2 replays; the
    # perturbation delta carried across batches is method state: killed at step 10 (epoch 0, batch 5)
    "free_at": (["method.name=free_at", "method.attack.name=fgsm", "method.attack.steps=1",
                 "method.attack.eps=0.2", "method.replays=2", "engine.backend=deepspeed", "engine.zero_stage=1",
                 "optim.name=adam", "optim.lr=0.01", "train.epochs=2", "train.ckpt_every=5"], 10, {}),
    # fast AT with the guard (probe every 2 steps, step-size response), a collapse forced at step 4:
    # the guard's statistics and lowered step are method state; killed at step 5
    "fast_at_guard": (["method.name=fast_at", "method.attack.name=fgsm_rs", "method.attack.eps=0.2",
                       "method.guard.every=2", "method.guard.pgd_steps=2", "engine.backend=torch",
                       "optim.name=adam", "optim.lr=0.01", "train.epochs=2", "train.ckpt_every=5"],
                      5, {"FORCE_COLLAPSE_AT": "4"}),
}


def _run(run_dir, overrides, kill_at=None, extra_env=None):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", **(extra_env or {}))
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
    overrides, kill_at, env = CASES[case]
    full, broken = tmp_path / "full", tmp_path / "broken"
    r = _run(full, overrides, extra_env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(broken, overrides, kill_at=kill_at, extra_env=env)
    assert r.returncode == -9, f"expected SIGKILL, got {r.returncode}: {r.stderr[-2000:]}"
    assert not (broken / "model.pt").exists()
    ckpts = sorted(os.listdir(broken / "checkpoints"))
    assert ckpts[-1] == f"step_{kill_at:09d}", ckpts
    r = _run(broken, overrides + ["resume=auto"], extra_env=env)
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
    # the method's state is in the checkpoint and equal at the end of both runs
    last = lambda run: torch.load(run / "checkpoints" / f"step_{max(la):09d}" / "rank00000.pt",  # noqa: E731
                                  weights_only=True)["methods"]["run"]
    sa, sb = last(full), last(broken)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert (torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k]), (case, k)
    if case == "free_at":
        assert sa["delta"].abs().max() > 0 and la[kill_at + 1]["loss"] == lb[kill_at + 1]["loss"]
    if case == "fast_at_guard":
        assert sa["fired_at"] == [4] and sa["alpha_scale"] == 0.5 and sa["responses"] == 1
        assert "catastrophic overfitting" in (broken / "alerts.jsonl").read_text()
