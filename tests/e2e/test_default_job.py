"""The default job end to end, through the real CLI: shards -> WebDataset -> PGD-AT through
the DeepSpeed engine -> robustness report -> W&B offline run; then `scaletrain eval`."""
import json
import math
import os

import pytest

from scaletrain.cli import main
from scaletrain.track.wandb_tracker import find_offline_runs, read_offline_history

EPOCHS = 6


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    args = ["train", f"out_dir={root}/runs", f"data.root={root}/data", f"train.epochs={EPOCHS}",
            "train.progress=false"]
    assert main(args) == 0
    return root / "runs" / "default"


def test_report_and_artifacts(default_run):
    for f in ("config.yaml", "report.json", "report.md", "robustness.png", "model.pt", "train_log.jsonl"):
        assert (default_run / f).is_file(), f
    rep = json.loads((default_run / "report.json").read_text())
    assert rep["n"] == 359  # the fixed 20% test split of the 1797 digits
    # after only a few epochs of PGD-AT: well above chance, and attacks do bite
    assert rep["clean_acc"] >= 0.85
    pgd = rep["attacks"]["pgd"]
    assert pgd["eps"] == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert pgd["acc"][0] == pytest.approx(rep["clean_acc"])
    assert all(a >= b - 1e-9 for a, b in zip(pgd["acc"], pgd["acc"][1:]))  # monotone in eps
    assert pgd["acc"][3] < rep["clean_acc"]
    assert 0.0 < rep["robustness_score"] < 1.0
    assert rep["attacks"]["fgsm"]["acc"][3] >= pgd["acc"][3] - 0.02  # PGD-20 at least as strong as FGSM
    steps = [json.loads(line)["step"] for line in (default_run / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] <= EPOCHS * math.ceil(1437 / 64)


def test_wandb_offline_run_recorded_metrics(default_run):
    files = find_offline_runs(str(default_run))
    assert len(files) == 1
    rows = read_offline_history(files[0])
    train_rows = [r for r in rows if "train/loss" in r]
    assert len(train_rows) >= 5
    eval_rows = [r for r in rows if "eval/clean_acc" in r]
    assert len(eval_rows) == 1
    rep = json.loads((default_run / "report.json").read_text())
    assert eval_rows[0]["eval/clean_acc"] == pytest.approx(rep["clean_acc"])
    assert eval_rows[0]["eval/pgd/acc@0.2"] == pytest.approx(rep["attacks"]["pgd"]["acc"][3])
    assert eval_rows[0]["eval/robustness_score"] == pytest.approx(rep["robustness_score"])
    assert eval_rows[0]["eval/worst_case/acc@0.2"] == pytest.approx(rep["worst_case"]["acc"][3])
    assert "eval/critical_eps/median" in eval_rows[0]
    assert any(k.startswith("eval/robustness_table") for k in eval_rows[0])


def test_eval_reproduces_report_exactly(default_run, capsys):
    assert main(["eval", str(default_run), "--no-progress"]) == 0
    a = json.loads((default_run / "report.json").read_text())
    b = json.loads((default_run / "eval" / "report.json").read_text())
    assert b["clean_acc"] == a["clean_acc"]
    for name in a["attacks"]:
        assert b["attacks"][name]["acc"] == a["attacks"][name]["acc"]
        assert b["attacks"][name]["auc"] == a["attacks"][name]["auc"]
    assert b["robustness_score"] == a["robustness_score"]
    assert "clean" in capsys.readouterr().out


def test_eval_errors_are_user_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    os.makedirs(tmp_path / "empty")
    assert main(["eval", str(tmp_path / "empty")]) == 2
