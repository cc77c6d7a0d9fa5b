"""`resume=auto` on a finished run: more epochs in the last stage continue from where it ended
(before, the finished checkpoint's position was past the last stage and nothing trained, without a
word); the same plan again trains nothing and says so."""
import json

import pytest

from scaletrain.cli import main


def _train(tmp_path, epochs):
    return main(["train", f"out_dir={tmp_path}/runs", f"data.root={tmp_path}/data", "name=ext", "resume=auto",
                 f"train.epochs={epochs}", "method.name=standard", "eval.max_samples=64", "eval.eps=[0.0,0.1]",
                 "eval.pgd_steps=2", "train.progress=false", "tracking.wandb=false"])


def _report(tmp_path):
    return json.loads((tmp_path / "runs" / "ext" / "report.json").read_text())


@pytest.mark.timeout(300)
def test_finished_run_extends_with_more_epochs(tmp_path, capsys):
    assert _train(tmp_path, 1) == 0
    one = _report(tmp_path)["train"]["global_step"]
    assert one > 0
    capsys.readouterr()
    assert _train(tmp_path, 2) == 0
    assert "extending it to 2" in capsys.readouterr().out
    rep = _report(tmp_path)
    assert rep["train"]["global_step"] == 2 * one                  # exactly one more epoch of steps
    log = [json.loads(line) for line in (tmp_path / "runs" / "ext" / "train_log.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in log) == 1 and max(r["step"] for r in log) > one
    assert _train(tmp_path, 2) == 0                                   # same plan: nothing left
    assert "nothing left to train" in capsys.readouterr().out
    assert _report(tmp_path)["train"]["global_step"] == 2 * one
