"""Fast engine unit tests: DeepSpeed config, accumulation, schedules, optimizer registry,
checkpoint atomicity and the weights_only guarantee (single process, torch backend)."""
import math
import os
import pickle

import pytest
import torch

from engine_helpers import CEMethod, Data, make_cfg
from scaletrain.engine import (LRSchedule, Trainer, build_engine, deepspeed_config, grad_accum_steps,
                               init_distributed, latest_checkpoint, register_optimizer)
from scaletrain.engine.checkpoint import CheckpointManager, rng_state, set_rng_state
from scaletrain.engine.optim import OPTIMIZERS, Segment
from scaletrain.errors import ConfigError, UserError
from scaletrain.models import create_model


def test_deepspeed_config_from_engine_section(tmp_path):
    cfg = make_cfg(tmp_path, "engine.zero_stage=3", "engine.grad_clip=0.5", "engine.precision=bf16",
                   "engine.global_batch_size=64")
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 64 and ds["gradient_clipping"] == 0.5
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["contiguous_gradients"] and z["reduce_scatter"]
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["zero_allow_untested_optimizer"]
    cfg.engine.deepspeed = {"zero_optimization": {"overlap_comm": True}, "steps_per_print": 5}
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["zero_optimization"]["overlap_comm"] and ds["zero_optimization"]["reduce_scatter"]
    assert ds["steps_per_print"] == 5


def test_global_batch_gives_accumulation(tmp_path):
    cfg = make_cfg(tmp_path, "engine.global_batch_size=64")
    assert grad_accum_steps(cfg, 1) == 4 and grad_accum_steps(cfg, 2) == 2 and grad_accum_steps(cfg, 4) == 1
    with pytest.raises(ConfigError, match="global_batch_size"):
        grad_accum_steps(cfg, 3)
    cfg = make_cfg(tmp_path, "engine.global_batch_size=64", "engine.grad_accum=3")
    with pytest.raises(ConfigError, match="disagree"):
        grad_accum_steps(cfg, 1)


def test_schedules():
    seg = [Segment(steps=100, lr=1.0)]
    cos = LRSchedule("cosine", seg, warmup_steps=10)
    assert cos(0) == pytest.approx(1 / 11) and cos(9) == pytest.approx(10 / 11)
    assert cos(10) == pytest.approx(1.0) and cos(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    lin = LRSchedule("linear", seg)
    assert lin(0) == 1.0 and lin(50) == pytest.approx(0.5)
    assert LRSchedule("constant", seg)(77) == 1.0
    # onecycle agrees with torch's OneCycleLR (cos annealing, pct_start 0.3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=101, cycle_momentum=False)
    one = LRSchedule("onecycle", [Segment(101, 1.0)])
    for s in range(101):
        assert one(s) == pytest.approx(ref.get_last_lr()[0], rel=1e-6, abs=1e-9), s
        opt.step()
        ref.step()
    # stages restart the schedule with their own peak lr
    two = LRSchedule("cosine", [Segment(10, 1.0), Segment(10, 0.1)])
    assert two(10) == pytest.approx(0.1) and two(9) < 0.05


def test_custom_optimizer_plugs_in(tmp_path):
    class SignSGD(torch.optim.Optimizer):
        def __init__(self, params, lr):
            super().__init__(params, dict(lr=lr))

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad.sign(), alpha=-g["lr"])

    if "test_signsgd" not in OPTIMIZERS:
        register_optimizer("test_signsgd")(lambda params, cfg: SignSGD(params, lr=cfg.lr))
    cfg = make_cfg(tmp_path, "engine.backend=torch", "optim.name=test_signsgd", "optim.lr=0.01")
    eng = build_engine(cfg, create_model(cfg.model), init_distributed(cfg))
    assert isinstance(eng.optimizer, SignSGD)
    before = {k: v.clone() for k, v in eng.module.state_dict().items()}
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    eng.backward(torch.nn.functional.cross_entropy(eng.forward(x), y))
    assert eng.step() and eng.global_step == 1
    delta = (eng.module.head[-1].weight - before["head.3.weight"]).abs()
    assert torch.allclose(delta[delta > 0], torch.tensor(0.01))
    with pytest.raises(ConfigError, match="optim.name"):
        build_engine(make_cfg(tmp_path, "engine.backend=torch", "optim.name=nope"), create_model(cfg.model),
                     init_distributed(cfg))


def test_torch_accumulation_matches_big_batch(tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    states = []
    for ga, chunks in ((1, [slice(0, 32)]), (4, [slice(i, i + 8) for i in range(0, 32, 8)])):
        cfg = make_cfg(tmp_path, "engine.backend=torch", f"engine.grad_accum={ga}", "model.name=mlp")
        torch.manual_seed(1)
        eng = build_engine(cfg, create_model(cfg.model), init_distributed(cfg))
        moved = []
        for sl in chunks:
            eng.backward(torch.nn.functional.cross_entropy(eng.forward(x[sl]), y[sl]))
            moved.append(eng.step())
        assert moved == [False] * (ga - 1) + [True] and eng.global_step == 1
        states.append(eng.consolidated_state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=1e-6)


def test_one_rank_deepspeed_skips_the_allreduce_and_matches_torch(tmp_path):
    """On one rank without ZeRO the DeepSpeed engine does not all-reduce gradients over its one process
    (a per-step cost, docs/benchmarks.md) and still takes the torch backend's steps; ZeRO keeps it."""
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    states = []
    for backend in ("torch", "deepspeed"):
        cfg = make_cfg(tmp_path, f"engine.backend={backend}", "model.name=mlp", "optim.name=adam")
        torch.manual_seed(1)
        eng = build_engine(cfg, create_model(cfg.model), init_distributed(cfg))
        if backend == "deepspeed":
            assert eng.ds.enable_backward_allreduce is False
        for i in range(3):
            eng.backward(torch.nn.functional.cross_entropy(eng.forward(x), y))
            eng.step()
        states.append(eng.consolidated_state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=1e-6)
    cfg = make_cfg(tmp_path, "engine.zero_stage=1", "model.name=mlp")
    assert build_engine(cfg, create_model(cfg.model), init_distributed(cfg)).ds.enable_backward_allreduce


def test_rng_state_roundtrip():
    import random

    import numpy as np
    s = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(s)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def _trained(tmp_path, *over):
    cfg = make_cfg(tmp_path, "engine.backend=torch", "model.name=mlp", "train.ckpt_every=2", *over)
    eng = build_engine(cfg, create_model(cfg.model), init_distributed(cfg))
    tr = Trainer(cfg, eng, CEMethod(), Data(cfg, 0, 1, n=96), run_dir=str(tmp_path / "run"))
    return cfg, eng, tr


def test_checkpoints_atomic_keep_last_and_crash_mid_write(tmp_path, monkeypatch):
    cfg, eng, tr = _trained(tmp_path, "train.keep_last=2")
    res = tr.fit()
    root = tmp_path / "run" / "checkpoints"
    names = sorted(os.listdir(root))
    assert names == ["step_000000004", "step_000000006"], names  # 6 steps, every 2, keep 2
    assert res["global_step"] == 6 and os.path.exists(res["model_path"])
    good = latest_checkpoint(str(root))
    # a crash while writing the next checkpoint leaves a .tmp folder and the good one intact
    mgr = CheckpointManager(str(root), keep_last=2)

    def boom(*a, **k):
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(eng, {"step": 7}, {"rng": rng_state()})
    monkeypatch.undo()
    assert any(n.startswith(".tmp-") for n in os.listdir(root))
    assert latest_checkpoint(str(root)) == good
    # a checkpoint whose meta.json is missing/incomplete is never picked
    os.makedirs(root / "step_000000099")
    assert latest_checkpoint(str(root)) == good
    # the weights of the final model equal the last checkpoint's consolidated model
    a = torch.load(res["model_path"], weights_only=True)
    b = torch.load(os.path.join(good, "model.pt"), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    cfg, eng, tr = _trained(tmp_path)
    tr.fit()
    ck = latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    with open(os.path.join(ck, "rank00000.pt"), "wb") as f:  # a tampered checkpoint
        pickle.dump({"rng": _Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        CheckpointManager.load(eng, ck)


def test_resume_errors_are_user_errors(tmp_path):
    cfg, eng, tr = _trained(tmp_path, f"resume={tmp_path}/nothing-here")
    with pytest.raises(UserError, match="resume"):
        tr.fit()


@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_checkpoint_loads_only_with_weights_only(tmp_path, monkeypatch, zero):
    cfg = make_cfg(tmp_path, "engine.backend=deepspeed", f"engine.zero_stage={zero}", "model.name=mlp",
                   "optim.name=adam")
    torch.manual_seed(0)
    eng = build_engine(cfg, create_model(cfg.model), init_distributed(cfg))
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(2):
        eng.backward(torch.nn.functional.cross_entropy(eng.forward(x), y))
        eng.step()
    saved = eng.consolidated_state_dict()
    eng.save_state(str(tmp_path / "ck"))
    for _ in range(2):  # move away from the saved state
        eng.backward(torch.nn.functional.cross_entropy(eng.forward(x), y))
        eng.step()
    calls, real_load = [], torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real_load(*a, **k)
    monkeypatch.setattr(torch, "load", spy)
    eng.load_state(str(tmp_path / "ck"))
    monkeypatch.undo()
    assert calls and all(c is True for c in calls), calls
    after = eng.consolidated_state_dict()
    for k in saved:
        assert torch.equal(saved[k], after[k]), k


def test_single_process_takes_another_port_when_the_inherited_one_is_busy():
    """A `scaletrain train` subprocess inherits MASTER_PORT from a parent whose own group still
    listens on it (seen in CI): a world of one has no peers to agree with, so it takes another port."""
    import socket
    import subprocess
    import sys
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    code = ("import os; from scaletrain.config import load_config; from scaletrain.engine import init_distributed, cleanup;"
            "d = init_distributed(load_config(None, ['tracking.wandb=false']));"
            "print('world', d.world_size, 'port', os.environ['MASTER_PORT']); cleanup()")
    env = dict(os.environ, MASTER_PORT=str(port), MASTER_ADDR="127.0.0.1", WORLD_SIZE="1", RANK="0")
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    assert r.returncode == 0, r.stderr[-2000:]
    world, new_port = r.stdout.split()[1], int(r.stdout.split()[3])
    assert world == "1" and new_port != port
