"""Attacks on a DeepSpeed ZeRO-3 engine's module (2 CPU ranks, gloo): the hooks gather the
partitioned parameters during the attack's forward and backward, and the result equals the
same attack on an identical plain model."""
import json
import math
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, args, world_size, timeout=300):
    port = str(free_port())
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen([sys.executable, script, *args], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    return outs


@pytest.mark.dist
def test_attacks_on_zero3_module_match_plain_model(tmp_path, digits_model):
    import torch
    weights = tmp_path / "w.pt"
    torch.save(digits_model.state_dict(), weights)
    out = tmp_path / "res"
    launch(os.path.join(HERE, "ds_zero3_worker.py"), [str(weights), str(out)], world_size=2)
    for rank in range(2):
        res = json.loads((tmp_path / f"res.rank{rank}.json").read_text())
        # ZeRO-3 really partitioned the parameters (local shapes are empty placeholders)
        assert all(math.prod(s) == 0 for s in res["partitioned_shapes"])
        for name in ("pgd", "apgd_ce", "deepfool"):
            r = res[name]
            assert r["max_abs_diff"] <= 1e-5, (rank, name, r)
            assert r["acc_ds"] == r["acc_plain"]
            assert r["acc_ds"] < 0.7
        assert res["pgd"]["linf"] <= 0.1 + 1e-6
        assert res["grads_untouched"]
        # the hooks released the gathered parameters again after the attacks and after a training step
        assert all(math.prod(s) == 0 for s in res["shapes_after_attacks"])
        assert all(math.prod(s) == 0 for s in res["shapes_after_step"])
        assert math.isfinite(res["train_loss"])
