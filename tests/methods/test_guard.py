"""The catastrophic-overfitting guard of fast_at: it probes for real (PGD and FGSM on the
training batch); a collapse is forced at one step (the probe's counts replaced by PGD accuracy 0,
FGSM accuracy 1: tests/engine/engine_helpers.force_collapse_at); the guard alerts on the console,
in alerts.jsonl and in W&B, and the run recovers with the configured response."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from engine_helpers import Data, force_collapse_at, make_cfg  # noqa: E402
from scaletrain.engine import Trainer, build_engine, init_distributed  # noqa: E402
from scaletrain.methods import create_method  # noqa: E402
from scaletrain.methods.fast import collapsed, probe_accuracy  # noqa: E402
from scaletrain.attacks import create_attack  # noqa: E402
from scaletrain.models import create_model  # noqa: E402
from scaletrain.rng import SampleRNG  # noqa: E402
from scaletrain.track import Tracker  # noqa: E402
from scaletrain.track.wandb_tracker import find_offline_runs, read_offline_history  # noqa: E402

FAST = ["method.name=fast_at", "method.attack.name=fgsm_rs", "method.attack.eps=0.2", "method.attack.alpha=0.25",
        "method.guard.every=2", "method.guard.pgd_steps=3", "engine.backend=torch", "optim.name=adam",
        "optim.lr=0.01", "train.epochs=2",
        # only a full collapse fires (probe PGD accuracy 0, FGSM >= 0.9): the forced one. With the default
        # thresholds a real 16-sample probe can fire too, depending on the thread count's arithmetic
        "method.guard.collapse=0.01", "method.guard.gap=0.9"]


def _fit(tmp_path, name, *overrides, tracker_on=False, force=()):
    cfg = make_cfg(tmp_path, *FAST, *overrides)
    torch.manual_seed(0)
    eng = build_engine(cfg, create_model(cfg.model), init_distributed(cfg))
    run_dir = str(tmp_path / name)
    tracker = None
    if tracker_on:
        cfg.tracking.wandb, cfg.tracking.mode = True, "offline"
        tracker = Tracker(cfg.tracking, run_dir, {}, rank=0, name=name)
    method = create_method(cfg.method)
    undo = force_collapse_at(*force)
    try:
        res = Trainer(cfg, eng, method, Data(cfg, 0, 1, n=96), run_dir=run_dir, tracker=tracker).fit()
    finally:
        undo()
        if tracker is not None:
            tracker.finish()
    return res, method, run_dir


def test_collapse_rule_and_real_probe():
    assert collapsed(0.05, 0.6, best_pgd=0.4, collapse=0.5, gap=0.3)
    assert not collapsed(0.3, 0.6, best_pgd=0.4, collapse=0.5, gap=0.3)      # PGD accuracy held up
    assert not collapsed(0.05, 0.2, best_pgd=0.4, collapse=0.5, gap=0.3)     # FGSM fails too: no CO
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    atks = [create_attack("pgd", eps=0.0, steps=2), create_attack("pgd", eps=0.3, steps=5, track_best=True)]
    clean, pgd = probe_accuracy(model, x, y, atks, SampleRNG(0, torch.arange(16)))
    assert clean == int((model(x).argmax(1) == y).sum()) and 0 <= pgd <= clean


def test_guard_step_size_response_alerts_in_wandb_and_lowers_the_step(tmp_path, capsys):
    res, m, run_dir = _fit(tmp_path, "step", tracker_on=True, force=(4,))
    assert m.fired_at == [4] and m.responses == 1 and m.alpha_scale == 0.5
    assert m.probes == 6 and res["global_step"] == 12 and res["rollbacks"] == 0
    assert m.attack_for(5).alpha == pytest.approx(0.125)       # the FGSM step from then on
    # logged at the train-log step of that batch (its optimizer step, 5)
    assert "ALERT step 5: catastrophic overfitting" in capsys.readouterr().out
    alert = json.loads(open(os.path.join(run_dir, "alerts.jsonl")).read().splitlines()[0])
    assert alert["step"] == 5 and alert["pgd_acc"] == 0.0 and alert["fgsm_acc"] == 1.0
    rows = read_offline_history(find_offline_runs(run_dir)[0])
    fired = [r for r in rows if "alert/catastrophic_overfitting" in r]
    assert len(fired) == 1, [sorted(r) for r in rows]
    assert "response: step x0.5" in fired[0]["alert/catastrophic_overfitting_text"]
    # the guard only fires on the forced collapse: the real probes before and after did not
    assert m.last_pgd >= 0 and m.best_pgd >= 0


def test_guard_rollback_response_reloads_and_continues(tmp_path):
    res, m, run_dir = _fit(tmp_path, "rollback", "method.guard.response=rollback", "train.ckpt_every=4",
                           force=(6,))
    # fired at step 6, reloaded the step-4 checkpoint, kept the lowered step, ran to the end
    assert res["rollbacks"] == 1 and res["global_step"] == 12
    assert m.fired_at == [6] and m.responses == 1 and m.alpha_scale == 0.5
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "train_log.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, 13))      # every step logged once
    assert [r["alpha_scale"] for r in rows][:4] == [1.0] * 4 and rows[5]["alpha_scale"] == 0.5
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_guard_rollback_skips_the_checkpoint_holding_the_collapsed_weights(tmp_path):
    # checkpoints and probes every 2 steps: the probe of step 6 judges the weights the step-6
    # checkpoint holds, so the rollback must reload step 4 (the last sound probe), not step 6
    res, m, run_dir = _fit(tmp_path, "rollback2", "method.guard.response=rollback", "train.ckpt_every=2",
                           "train.keep_last=0", force=(6,))
    assert res["rollbacks"] == 1 and res["global_step"] == 12
    assert m.fired_at == [6] and m.responses == 1 and m.alpha_scale == 0.5 and m.sound_at == 10
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "train_log.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, 13))
    # steps 5 and 6 were replayed with the lowered step (reloading step 6 would have kept them at 1.0)
    assert [r["alpha_scale"] for r in rows][:4] == [1.0] * 4 and rows[4]["alpha_scale"] == 0.5
