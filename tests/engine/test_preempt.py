"""Preemption through the real CLI: SIGTERM mid-epoch -> every rank finishes its step, one
checkpoint, exit 75 (EXIT_PREEMPTED), the interruption on record; `resume=auto` then ends with
the same weights, loss curve and report as an uninterrupted run. 1 process and 2 torchrun ranks."""
import json
import os

import pytest

from preempt_helpers import log_rows, report, run, run_and_signal, same_weights
from scaletrain.engine.checkpoint import list_checkpoints, read_meta
from scaletrain.errors import EXIT_PREEMPTED

CASES = {  # ranks, epochs (steps: 1 rank 23/epoch, 2 ranks 12/epoch), signal at step >= 3
    "local_1rank": (1, 2),
    "torchrun_2ranks": (2, 3),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("preempt_data") / "digits")


@pytest.mark.dist
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", sorted(CASES))
def test_sigterm_checkpoints_exits_75_and_resumes_identically(tmp_path, data_root, case):
    ranks, epochs = CASES[case]
    common = [f"out_dir={tmp_path}", f"data.root={data_root}", f"train.epochs={epochs}"]
    rc, out = run(ranks, common + ["name=full"])
    assert rc == 0, out[-3000:]
    cut = tmp_path / "cut"
    rc, out = run_and_signal(ranks, common + ["name=cut"], str(cut), at_step=3)
    if ranks == 1:
        assert rc == EXIT_PREEMPTED, out[-3000:]
    else:  # torchrun forwards SIGTERM to its ranks and exits 1 itself (its SignalException)
        assert rc == 1, out[-3000:]
        assert out.count(f"scaletrain train: interrupted by SIGTERM at step") == ranks, out[-3000:]
        assert out.count(f"continue (exit {EXIT_PREEMPTED})") == ranks
    assert "SIGTERM received: finishing the current step" in out
    assert not (cut / "model.pt").exists()
    ckpts = list_checkpoints(str(cut / "checkpoints"))
    assert len(ckpts) == 1
    meta = read_meta(ckpts[0])
    total = epochs * (23 if ranks == 1 else 12)
    assert 3 <= meta["step"] < total and meta["interrupted"] == "SIGTERM"
    assert meta["batch"] > 0  # mid-epoch
    rec = json.loads((cut / "interrupted.json").read_text())
    assert rec["step"] == meta["step"] and rec["exit_code"] == EXIT_PREEMPTED and rec["reason"] == "SIGTERM"
    assert max(log_rows(str(cut))) == meta["step"]  # every rank stopped at the same step

    (cut / "STOP").write_text("stale request of the interrupted launch\n")  # a new launch ignores it
    rc, out = run(ranks, common + ["name=cut", "resume=auto"])
    assert rc == 0, out[-3000:]
    assert same_weights(tmp_path / "full", cut)
    la, lb = log_rows(str(tmp_path / "full")), log_rows(str(cut))
    assert sorted(la) == sorted(lb) and max(la) == total
    assert all(la[s]["loss"] == lb[s]["loss"] for s in la)
    assert report(tmp_path / "full") == report(cut)
    assert not (cut / "STOP").exists()
    assert json.loads((cut / "report.json").read_text())["train"]["resumed_from"] == ckpts[0]
