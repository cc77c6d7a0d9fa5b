"""Rollback inside a running job (the catastrophic-overfitting guard's spine): a method asks for
it, the trainer reloads the newest checkpoint (weights, optimizer, RNG, data position) and goes
on. A guard that fires once and then behaves as before must end bit-identical to a run without
it, with each step logged once."""
import json

import torch
import torch.nn.functional as F

from engine_helpers import Data, make_cfg
from scaletrain.engine import Trainer, build_engine, init_distributed
from scaletrain.methods import Event, Method
from scaletrain.models import create_model


class GuardedCE(Method):
    events = (Event.LOSS,)

    def __init__(self, fire_at=None):
        super().__init__()
        self.fire_at, self.fired = fire_at, 0

    def loss(self, model, x, y, ctx):
        x = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)  # global RNG: restored by the rollback
        logits = model(x)
        if self.fire_at is not None and not self.fired and ctx.engine.global_step + 1 == self.fire_at:
            self.fired += 1
            ctx.request_rollback("test guard")
        return F.cross_entropy(logits, y), logits, {}


def _fit(tmp_path, name, method):
    cfg = make_cfg(tmp_path, "engine.backend=torch", "train.ckpt_every=4", "train.epochs=2", "optim.name=adam",
                   "optim.lr=0.01", "optim.schedule=cosine")
    torch.manual_seed(0)
    eng = build_engine(cfg, create_model(cfg.model), init_distributed(cfg))
    res = Trainer(cfg, eng, method, Data(cfg, 0, 1, n=96), run_dir=str(tmp_path / name)).fit()
    return res, torch.load(res["model_path"], weights_only=True)


def test_rollback_reloads_last_checkpoint_and_continues_identically(tmp_path):
    res_a, a = _fit(tmp_path, "plain", GuardedCE())
    guard = GuardedCE(fire_at=7)  # 6 steps/epoch; rolls back from epoch 1 to the mid-epoch-0 step-4 checkpoint
    res_b, b = _fit(tmp_path, "guarded", guard)
    assert guard.fired == 1 and res_b["rollbacks"] == 1 and res_a["rollbacks"] == 0
    assert res_b["global_step"] == res_a["global_step"] == 12
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in open(tmp_path / "guarded" / "train_log.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 13))
