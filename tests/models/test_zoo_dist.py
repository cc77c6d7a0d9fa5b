"""Every zoo model trains through the DeepSpeed engine on 2 real gloo ranks (one launch for all)."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
sys.path.insert(0, os.path.dirname(__file__))
from engine_launch import run_ranks  # noqa: E402
from zoo_worker import SPECS  # noqa: E402


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_every_model_trains_on_two_ranks(tmp_path):
    script = os.path.relpath(os.path.join(os.path.dirname(__file__), "zoo_worker.py"),
                             os.path.join(os.path.dirname(__file__), "..", "engine"))
    run_ranks(script, [str(tmp_path)], 2, timeout=540)
    for tag, _, over in SPECS:
        r0, r1 = (torch.load(tmp_path / f"{tag}.rank{r}.pt", weights_only=True) for r in (0, 1))
        assert r0["steps"] == 3, tag                                   # 48 samples / global batch 16
        assert len(r0["losses"]) == 3 and all(math.isfinite(v) for v in r0["losses"]), (tag, r0["losses"])
        moved = 0.0
        for k, v in r0["after"].items():
            assert torch.isfinite(v).all(), (tag, k)
            if not k.endswith(("running_mean", "running_var")):       # BN statistics: below
                assert torch.equal(v, r1["after"][k]), (tag, k)         # ranks hold the same model
            if v.is_floating_point() and k in r0["before"]:
                moved = max(moved, float((v - r0["before"][k]).abs().max()))
        assert moved > 1e-3, tag                                        # the optimizer changed the weights
        bn_means = [k for k in r0["buffers"] if k.endswith("running_mean")]
        if "model.sync_bn=true" in over:
            assert r0["bn_types"] == ["GlobalBatchNorm"], tag
            for k in bn_means:  # statistics of the global batch: identical on both ranks
                assert torch.allclose(r0["buffers"][k], r1["buffers"][k], atol=1e-6), (tag, k)
        elif bn_means:  # without sync each rank keeps statistics of its own samples
            assert any(not torch.allclose(r0["buffers"][k], r1["buffers"][k]) for k in bn_means), tag
