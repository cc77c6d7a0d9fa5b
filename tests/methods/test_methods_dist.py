"""Every method of the adversarial slice, SHIPPED and built from config, trains under the
DeepSpeed engine (ZeRO-1) on 2 real gloo ranks and gives the 1-rank result with the same global
batches: fast AT with its guard probing, Free AT, TRADES, MART, and PGD-AT with the schedules
(eps and steps warm-up, clean/adversarial mix, attacks on the model's own prediction).

One 2-rank launch trains all cases in turn (CI time). Random starts come from the trainer's
per-sample generator, so the ranks draw exactly what the single rank draws. Measured on CPU:
bit-identical except Free AT (1 rank holds the global batch as one micro-batch of 32, the ranks
16 each: the mean is summed in another order, ~1e-7); the stated tolerance is 1e-5.
Free AT makes exactly one backward (and one forward) per replay and no attack gradients.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from engine_launch import run_ranks  # noqa: E402

STEPS = 4
TOL = 1e-5
WORKER = os.path.join("..", "methods", "methods_worker.py")


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_methods_two_ranks_match_one_rank(tmp_path):
    run_ranks(WORKER, [str(tmp_path / "one"), str(STEPS)], 1)
    run_ranks(WORKER, [str(tmp_path / "two"), str(STEPS)], 2)
    one = torch.load(tmp_path / "one.rank0.pt", weights_only=True)
    two = [torch.load(tmp_path / f"two.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert sorted(one) == ["fast_at_guard", "free_at", "mart", "pgd_at_schedules", "trades"]
    for name, ref in one.items():
        assert ref["steps"] == STEPS and len(ref["losses"]) == STEPS, name
        assert torch.isfinite(ref["losses"]).all(), name
        torch.testing.assert_close(two[0][name]["losses"], ref["losses"], rtol=0, atol=TOL, msg=name)
        for r in (0, 1):
            for k, v in ref["state"].items():
                torch.testing.assert_close(two[r][name]["state"][k], v, rtol=0, atol=TOL, msg=f"{name} rank {r} {k}")
        if name != "free_at":  # identical arithmetic: bit for bit
            assert torch.equal(two[0][name]["losses"], ref["losses"]), name
    # the guard probed every 2 steps on both ranks and made the same (all-reduced) judgement
    g1, g2 = one["fast_at_guard"]["method_state"], two[1]["fast_at_guard"]["method_state"]
    assert g1["probes"] == 2 and g1 == g2 and 0 <= g1["last_pgd"] <= g1["last_fgsm"] + 1
    # Free AT: 2 batches x 2 replays = 4 optimizer steps; one backward and one forward per replay
    # on each rank, and no separate attack (no torch.autograd.grad at all)
    for res, world in ((one, 1), (two[0], 2)):
        c = res["free_at"]["counts"]
        # + one no-grad forward per rank at the stage start: its FLOP count (engine/stages.py)
        assert c == {"backward": STEPS * world, "forward": STEPS * world + world, "input_grad": 0}, c
        # TRADES: 2 attack steps per micro-batch, 2 micro-batches (1 rank) or 2 ranks per global batch
        assert res["trades"]["counts"]["input_grad"] == 2 * 2 * STEPS
    # the per-rank Free-AT perturbations are the two halves of the single rank's
    d1 = one["free_at"]["method_state"]["delta"]
    d2 = torch.cat([two[r]["free_at"]["method_state"]["delta"] for r in (0, 1)])
    assert d1.shape == (32, 1, 8, 8) and d1.abs().max() > 0
    torch.testing.assert_close(d2, d1, rtol=0, atol=TOL)
