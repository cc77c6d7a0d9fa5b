"""W&B as a dashboard: an unreachable server never ends a run (offline fallback, one warning
line), a resumed run continues the same W&B run id, and robustness is logged every epoch."""
import json
import os

import pytest

from scaletrain.cli import main
from scaletrain.engine.dist import free_port
from scaletrain.track.wandb_tracker import find_offline_runs, read_offline_history

TINY = ["method.name=standard", "train.eval_every_epochs=1", "train.eval_samples=64", "train.eval_eps=0.1",
        "train.eval_steps=2", "eval.attacks=[pgd]", "eval.eps=[0.0,0.1]", "eval.pgd_steps=2", "eval.max_samples=64",
        "model.width=8", "engine.backend=torch", "train.progress=false", "tracking.mode=auto"]


@pytest.mark.timeout(300)
def test_unreachable_server_falls_back_offline_and_resume_keeps_the_run_id(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)           # conftest forces offline; this test needs auto
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)              # "logged in" -> online is attempted
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")   # nothing listens there
    common = [f"out_dir={tmp_path}/runs", f"data.root={tmp_path}/data", "name=dash", *TINY]
    assert main(["train", "train.epochs=2", "train.ckpt_every=23", *common]) == 0   # 23 steps per epoch
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "W&B server unreachable" in line]
    assert len(warnings) == 1 and "wandb sync" in warnings[0] and "127.0.0.1" in warnings[0], err[-2000:]
    run_dir = tmp_path / "runs" / "dash"
    assert (run_dir / "report.json").exists()                  # trained and evaluated on
    first_id = (run_dir / "wandb_run_id.txt").read_text()
    files = find_offline_runs(str(run_dir))
    assert len(files) == 1 and first_id in files[0]

    # as if the run had been killed after its step-23 checkpoint: resume=auto redoes epoch 2
    # and logs it to the same W&B run (a second offline folder with the same id; `wandb sync` merges)
    import shutil
    shutil.rmtree(run_dir / "checkpoints" / "step_000000046")
    for f in ("model.pt", "report.json"):
        (run_dir / f).unlink()
    assert main(["train", "train.epochs=2", "train.ckpt_every=23", "resume=auto", *common]) == 0
    assert (run_dir / "wandb_run_id.txt").read_text() == first_id
    files = find_offline_runs(str(run_dir))
    assert len(files) == 2 and all(first_id in f for f in files)
    first, second = ([(r["_step"], r["eval/pgd_acc"]) for r in read_offline_history(f) if "eval/pgd_acc" in r]
                     for f in files)
    assert [s for s, _ in first] == [23, 46]                   # robustness during training, per epoch
    assert second and second[-1][0] == 46 and all(0.0 <= a <= 1.0 for _, a in first + second)
    steps = [json.loads(x)["step"] for x in open(run_dir / "train_log.jsonl")]
    assert steps == sorted(set(steps))
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["train"]["resumed_from"].endswith("step_000000023")


def test_nonfinite_loss_guard_raises():
    from scaletrain.orchestrate.sweep import FiniteLossGuard
    g = FiniteLossGuard()
    g.on_log(None, {"loss": 0.3}, 5)
    with pytest.raises(FloatingPointError, match="nan at step 7"):
        g.on_log(None, {"loss": float("nan")}, 7)


def test_finish_returns_only_once_the_run_file_is_complete(tmp_path, capsys):
    # run.finish() may return before W&B's service wrote the file's tail (an offline run read back
    # with no history under load): Tracker.finish() waits for the exit record
    import shutil

    from omegaconf import OmegaConf
    from scaletrain.track import Tracker
    from scaletrain.track.wandb_tracker import wait_for_exit_record

    cfg = OmegaConf.create({"wandb": True, "mode": "offline", "project": "p", "entity": None, "group": None,
                            "tags": []})
    t = Tracker(cfg, str(tmp_path / "run"), {}, name="x")
    for i in range(3):
        t.log({"a": i}, step=i)
    t.finish()
    f = find_offline_runs(str(tmp_path / "run"))[0]
    assert [r["a"] for r in read_offline_history(f)] == [0, 1, 2]       # read at once: complete
    cut = str(tmp_path / "cut.wandb")                                   # the same file without its tail
    shutil.copy(f, cut)
    with open(cut, "r+b") as fh:
        fh.truncate(os.path.getsize(f) - 8)
    assert wait_for_exit_record(f, timeout=1.0)
    assert not wait_for_exit_record(cut, timeout=0.3)
    assert "has not finished writing" in capsys.readouterr().err
