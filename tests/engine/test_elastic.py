"""Elastic resume through the real CLI: a ZeRO-2 checkpoint written by 2 torchrun ranks
resumes on 2 ranks at ZeRO-1 (bit-identical to the uninterrupted run: the layout-free state is
exact) and on 1 rank (same global batch via engine.global_batch_size; the loss curve continues
within the noise of a different data layout, and the restored state equals the checkpoint)."""
import os
import shutil

import pytest
import torch

from preempt_helpers import log_rows, run, same_weights
from scaletrain.config import load_config
from scaletrain.engine import build_engine, cleanup, init_distributed
from scaletrain.engine.checkpoint import CheckpointManager, read_meta
from scaletrain.engine.elastic import _full_states, save_slices
from scaletrain.models import create_model

AT = 6


def _common(root):
    return [f"out_dir={root}", f"data.root={root}/data", "train.epochs=2", "engine.zero_stage=2",
            "engine.global_batch_size=128", f"train.ckpt_every={AT}", "train.keep_last=0", "optim.lr=0.01"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    rc, out = run(2, _common(root) + ["name=ref"])
    assert rc == 0, out[-3000:]
    return root


def _resume_from_ref(root, name, ranks, extra=()):
    ckpt = root / "ref" / "checkpoints" / f"step_{AT:09d}"
    os.makedirs(root / name / "checkpoints")
    shutil.copytree(ckpt, root / name / "checkpoints" / ckpt.name)
    rc, out = run(ranks, _common(root) + [f"name={name}", "resume=auto", *extra])
    assert rc == 0, out[-3000:]
    return root / name


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_zero2_two_ranks_resume_on_two_ranks_zero1_bit_identical(ref):
    run_dir = _resume_from_ref(ref, "two", 2, ["engine.zero_stage=1"])  # another stage: the elastic path
    assert same_weights(ref / "ref", run_dir)
    la, lb = log_rows(str(ref / "ref")), log_rows(str(run_dir))
    assert sorted(lb) == [s for s in sorted(la) if s > AT] and all(la[s]["loss"] == lb[s]["loss"] for s in lb)


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_zero2_two_ranks_resume_on_one_rank(ref):
    run_dir = _resume_from_ref(ref, "one", 1)
    la, lb = log_rows(str(ref / "ref")), log_rows(str(run_dir))
    assert min(lb) == AT + 1 and max(lb) >= max(la) - 1
    first = la[1]["loss"]
    # continuous: every resumed step within 15% of the uninterrupted curve, on average within 3%,
    # and well below where training started. The first resumed step differs most: its samples are
    # another layout's (measured 6.7% and 9.6% with two generations of the random streams, the
    # other steps 0-5%, means 1.3% and 1.9%)
    rel = [abs(lb[s]["loss"] - la[s]["loss"]) / la[s]["loss"] for s in lb if s in la]
    assert max(rel) < 0.15 and sum(rel) / len(rel) < 0.03, rel
    assert lb[max(lb)]["loss"] < first - 0.1


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_elastic_load_restores_weights_and_optimizer_state_exactly(ref, tmp_path):
    ckpt = str(ref / "ref" / "checkpoints" / f"step_{AT:09d}")
    meta = read_meta(ckpt)
    assert meta["world_size"] == 2 and meta["zero_stage"] == 2
    cfg = load_config(os.path.join(ckpt, "config.yaml"), ["engine.zero_stage=2"])
    dist = init_distributed(cfg)
    try:
        torch.manual_seed(123)  # other initial weights: everything must come from the checkpoint
        engine = build_engine(cfg, create_model(cfg.model), dist)
        meta1, rank_state = CheckpointManager.load(engine, ckpt)
        assert meta1["elastic_from"] == 2 and meta1["micro_step"] == AT * 2  # accumulation 2 at 1 rank
        saved = torch.load(os.path.join(ckpt, "model.pt"), weights_only=True)
        now = engine.consolidated_state_dict()
        assert all(torch.equal(saved[k], now[k]) for k in saved)
        save_slices(engine, str(tmp_path))
        numels = {k: v.numel() for k, v in saved.items()}
        a, sa = _full_states(ckpt, 2, numels)
        b, sb = _full_states(str(tmp_path), 1, numels)
        assert a.keys() == b.keys() and len(a) == len(list(engine.module.parameters()))
        for name in a:
            assert set(a[name]) == {"exp_avg", "exp_avg_sq"}
            for key in a[name]:
                assert torch.equal(a[name][key], b[name][key]), (name, key)
            assert float(sa[name]["step"]) == float(sb[name]["step"]) == AT
    finally:
        cleanup()
