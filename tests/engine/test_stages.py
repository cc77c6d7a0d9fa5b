"""Multi-stage recipes: partial stage sections merged over the run's, validation at load (a
stage-2 typo exits 2 before stage 1 trains), lengths in samples, per-stage schedules, and a
two-stage ViT run (token masking, optimizer reset) SIGKILLed in the middle of stage 2 and
resumed with resume=auto that ends with the same weights and report as an uninterrupted run."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from scaletrain.config import load_config
from scaletrain.config.stages import stage_method
from scaletrain.engine.optim import LRSchedule, Segment
from scaletrain.engine.stages import StageRuntime, plan_stages, resolve_lengths
from scaletrain.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RECIPE = os.path.join(ROOT, "configs", "digits", "advxl_two_stage.yaml")


def test_stage_method_overrides_only_what_it_sets():
    cfg = load_config(RECIPE, ["method.attack.eps=0.3", "method.attack.restarts=2"])
    weak, strong = stage_method(cfg, 0), stage_method(cfg, 1)
    assert (weak.name, weak.attack.name, weak.attack.eps, weak.attack.restarts) == ("pgd_at", "pgd", 0.3, 2)
    assert (weak.attack.steps, weak.attack.alpha) == (1, 0.3125)
    assert (strong.attack.steps, strong.attack.alpha) == (3, None)
    cfg = load_config(RECIPE, ["stages=[{epochs: 1}, {epochs: 1, method: {name: standard}}]"])
    assert stage_method(cfg, 0) is None and stage_method(cfg, 1).name == "standard"
    assert stage_method(cfg, 1).attack.eps == cfg.method.attack.eps


@pytest.mark.parametrize("override,key", [
    ("stages=[{epochs: 1}, {method: {attack: {stepz: 3}}}]", "stages[1].method.attack.stepz"),
    ("stages=[{epochs: 1}, {method: {attack: {steps: -3}}}]", "stages[1].method.attack.steps"),
    ("stages=[{epochs: 1}, {method: {attack: {name: pgdd}}}]", "stages[1].method.attack.name"),
    ("stages=[{epochs: 1}, {method: {name: nosuch}}]", "stages[1].method.name"),
    ("stages=[{epochs: 1}, {epoch: 2}]", "stages[1].epoch"),
    ("stages=[{epochs: 1}, {token_keep: 0.5}]", "stages[1].token_keep"),       # the CNN has no tokens
    ("stages=[{epochs: 1}, {optimizer_state: keep}]", "stages[1].optimizer_state"),
    ("stages=[{epochs: 1}, {schedule: cosin}]", "stages[1].schedule"),
    ("stages=[{epochs: 1}, {samples: 0}]", "stages[1].samples"),
])
def test_stage_mistakes_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(RECIPE, [override])


def test_stage_two_typo_exits_2_before_training(tmp_path):
    with open(RECIPE) as f:
        cfg = yaml.safe_load(f)
    cfg["stages"][1]["method"]["attack"]["setps"] = 3
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.run([sys.executable, "-m", "scaletrain.cli", "train", str(path), f"out_dir={tmp_path}/runs",
                        f"data.root={tmp_path}/data"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=ROOT))
    assert p.returncode == 2, p.stderr[-2000:]
    assert "stages[1].method.attack.setps" in p.stderr and "did you mean" in p.stderr.lower()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()   # nothing started


def test_stage_summary_counts_the_iterations_the_attack_runs():
    # FGSM makes one step whatever `steps` the attack section holds (the default 5 was printed before)
    cfg = load_config(None, ["method.name=fast_at", "method.attack.name=fgsm_rs", "method.attack.eps=0.3",
                             "stages=[{name: a, epochs: 1}, {name: b, epochs: 1, method: {name: pgd_at, "
                             "attack: {name: pgd, steps: 7}}}]"])
    engine = type("E", (), {"module": torch.nn.Linear(2, 2)})()
    rt = StageRuntime(cfg, engine, plan_stages(cfg))
    assert [(rt.describe(i)["attack"], rt.describe(i)["attack_steps"]) for i in (0, 1)] == [("fgsm_rs", 1), ("pgd", 7)]


def test_lengths_in_samples_and_per_stage_schedules():
    cfg = load_config(RECIPE, ["data.batch_size=10",
                               "stages=[{samples: 95}, {samples: 30, schedule: constant, warmup_steps: 2}, {}]"])
    st = plan_stages(cfg)
    resolve_lengths(st, 10, 2, lambda si: 2)                 # 2 micro-batches per rank per epoch
    assert [(s.epochs, s.last_batches) for s in st] == [(3, 1), (1, 2), (30, None)]  # ceil(95/20)=5 batches
    assert [s.batches(e, 2) for s in st[:1] for e in range(3)] == [2, 2, 1]
    sched = LRSchedule("cosine", [Segment(4, 0.1), Segment(4, 0.01, kind="constant", warmup=2)])
    assert sched(0) == pytest.approx(0.1) and sched(3) < 0.1
    assert [sched(i) for i in (4, 5, 6, 7)] == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01])


def _run(cfg, out, extra=(), kill_at=None):
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "KILL_AT"):
        env.pop(k, None)
    if kill_at is not None:
        env["KILL_AT"] = str(kill_at)
    return subprocess.run([sys.executable, os.path.join(HERE, "stages_worker.py"), cfg, f"out_dir={out}",
                           *extra], env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.dist
@pytest.mark.timeout(900)
def test_two_stage_vit_killed_mid_stage_two_resumes_to_the_same_report(tmp_path):
    cfg = {"name": "two", "data": {"root": str(tmp_path / "data"), "batch_size": 64},
           "model": {"name": "vit", "image_size": 8, "kwargs": {"dim": 32, "depth": 2, "heads": 2, "patch_size": 2}},
           "method": {"name": "pgd_at", "attack": {"name": "pgd", "eps": 0.2, "steps": 2}},
           "optim": {"name": "adam", "lr": 0.003, "schedule": "cosine"},
           "engine": {"zero_stage": 1},
           "train": {"ckpt_every": 10, "progress": False, "keep_last": 5},
           "stages": [{"name": "weak", "epochs": 1, "token_keep": 0.5, "token_mask": "block",
                       "method": {"attack": {"steps": 1, "alpha": 0.25}}},
                      {"name": "strong", "epochs": 1, "lr": 0.001, "optimizer_state": "reset"}],
           "eval": {"attacks": ["pgd"], "eps": [0.0, 0.2], "pgd_steps": 5, "max_samples": 64},
           "tracking": {"wandb": False}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    full, broken = tmp_path / "full", tmp_path / "broken"
    r = _run(str(path), full)
    assert r.returncode == 0, r.stderr[-3000:]
    # digits: 1438 train samples = 23 batches of 64 per epoch; stage 1 = steps 1-23, stage 2 = 24-46
    r = _run(str(path), broken, kill_at=30)                  # 7 steps into stage 2, mid-epoch
    assert r.returncode == -9, f"expected SIGKILL, got {r.returncode}: {r.stderr[-2000:]}"
    assert sorted(os.listdir(broken / "two" / "checkpoints"))[-1] == "step_000000030"
    assert not (broken / "two" / "report.json").exists()
    r = _run(str(path), broken, ["resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]

    a = torch.load(full / "two" / "model.pt", weights_only=True)
    b = torch.load(broken / "two" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((full / "two" / "report.json").read_text())
    rb = json.loads((broken / "two" / "report.json").read_text())
    assert ra["attacks"] == rb["attacks"] and ra["clean_acc"] == rb["clean_acc"]
    assert rb["train"]["resumed_from"].endswith("step_000000030")
    for sa, sb in zip(ra["stages"], rb["stages"]):
        for k in ("name", "samples", "fwd_bwd_passes", "attack_fwd_bwd_passes", "attack_steps", "token_keep",
                  "pass_gflops"):
            assert sa[k] == sb[k], (k, sa, sb)
    weak, strong = ra["stages"]
    assert (weak["samples"], strong["samples"]) == (1438, 1438)
    # compute accounting: PGD-1 = 1 fwd+bwd per sample, PGD-2 = 2; half the tokens cost less
    assert weak["attack_fwd_bwd_passes"] == 1438 and strong["attack_fwd_bwd_passes"] == 2 * 1438
    assert weak["fwd_bwd_passes"] == 2 * 1438
    assert weak["pass_gflops"] < 0.7 * strong["pass_gflops"]
    assert (weak["token_keep"], strong["token_keep"], strong["optimizer_state"]) == (0.5, 1.0, "reset")
