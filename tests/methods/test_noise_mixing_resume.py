"""Kill-and-resume stays exact with the noise / mixing / regulariser methods: one run combining
every source of randomness of this slice (Gaussian input noise and CutMix from ctx.rng, PNI weight
noise keyed by buffers, DropBlock masks and VIB noise from per-sample streams keyed by step), SIGKILLed
right after a mid-epoch checkpoint and resumed, ends bit-identical to an uninterrupted run.
Uses tests/engine/resume_worker.py (the shipped method, model and DeepSpeed engine)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from test_engine_resume import _log, _run  # noqa: E402

OVERRIDES = ["method.name=standard", "model.pni=channel", "model.vib_dim=8", "model.kwargs.dropblock_prob=0.2",
             "method.extra=[{name: gaussian_noise, kwargs: {sigma: 0.2}}, {name: cutmix}, {name: pni}, "
             "{name: vib, kwargs: {beta: 0.01}}]",
             "engine.backend=deepspeed", "engine.zero_stage=1", "optim.name=adam", "optim.lr=0.01",
             "train.epochs=2", "train.ckpt_every=5"]


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_kill_and_resume_is_bit_identical_with_noise_mixing_pni_dropblock_vib(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    r = _run(full, OVERRIDES)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(broken, OVERRIDES, kill_at=5)
    assert r.returncode == -9, f"expected SIGKILL, got {r.returncode}: {r.stderr[-2000:]}"
    r = _run(broken, OVERRIDES + ["resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(broken / "model.pt", weights_only=True)
    assert any(k.endswith("pni_calls") for k in a) and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    la, lb = _log(full), _log(broken)
    assert sorted(la) == sorted(lb) and max(la) > 5
    for step in la:
        assert la[step]["loss"] == lb[step]["loss"], step
        assert la[step]["vib_kl"] == lb[step]["vib_kl"] and la[step]["pni_alpha"] == lb[step]["pni_alpha"], step
