"""Sharded evaluation: 2 gloo ranks give exactly the 1-rank report (every number, every record)."""
import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_ranks(args, world_size, timeout=300):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "dist_eval_worker.py"), *args],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out = p.communicate(timeout=timeout)[0]
        assert p.returncode == 0, out[-3000:]


@pytest.mark.dist
def test_two_ranks_equal_one_rank(tmp_path, digits_model):
    import torch
    weights = tmp_path / "w.pt"
    torch.save(digits_model.state_dict(), weights)
    run_ranks([str(weights), str(tmp_path / "one")], 1)
    run_ranks([str(weights), str(tmp_path / "two")], 2)
    one = json.loads((tmp_path / "one.rank0.json").read_text())
    two0 = json.loads((tmp_path / "two.rank0.json").read_text())
    two1 = json.loads((tmp_path / "two.rank1.json").read_text())
    assert one["n"] == 90 and one["attacks"]["pgd"]["acc"][2] < one["clean_acc"] - 0.3
    assert len(one["certify"]["records"]) == 6
    assert two0 == one          # identical, not approximately equal
    assert two1 == one          # every rank returns the reduced report


@pytest.mark.dist
def test_presharded_loader_is_rejected(tmp_path, digits_model):
    import torch
    weights = tmp_path / "w.pt"
    torch.save(digits_model.state_dict(), weights)
    run_ranks([str(weights), str(tmp_path / "bad"), "presharded"], 2)
    for rank in range(2):
        err = json.loads((tmp_path / f"bad.rank{rank}.json").read_text())["error"]
        assert err.startswith("UserError") and "unsharded" in err


@pytest.mark.dist
def test_eval_main_two_ranks_equal_one(tmp_path, digits_model):
    """`scaletrain eval RUN --ranks 2` (spawned gloo ranks, real shards of the run's test split)
    writes the same report as one rank."""
    import torch

    from scaletrain.config import load_config, save_config
    from scaletrain.data import prepare
    from scaletrain.evaluate.cli import eval_main
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", "model.width=16", "eval.pgd_steps=2",
                             "eval.eps=[0.0,0.1]", "eval.batch_size=64", "eval.max_samples=200",
                             "eval.attacks=[fgsm,pgd]", "eval.noise_sigmas=[0.2]", "tracking.wandb=false"])
    prepare(cfg.data)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, str(run / "config.yaml"))
    torch.save(digits_model.state_dict(), run / "model.pt")
    assert eval_main([str(run), "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    assert eval_main([str(run), "--out", str(tmp_path / "two"), "--ranks", "2", "--no-progress"]) == 0
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    for r in (one, two):
        r.pop("seconds")
    assert two.pop("world_size") == 2 and one.pop("world_size") == 1
    assert one["n"] == 200 and two == one
