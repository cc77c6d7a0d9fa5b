"""The shipped CLI and config: `scaletrain train configs/digits_hebbian.yaml optim.name=circle
method.kwargs.supervised=pgd_at` (Hebbian first layer + circle-constrained Langevin + PGD-AT on
top) through DeepSpeed; the report carries the optimizer's temperature schedule and largest
violation, the Hebbian filters PNG and unconverged fraction; W&B (offline) has them too."""
import json
import time

import pytest

from scaletrain.cli import main
from scaletrain.track.wandb_tracker import find_offline_runs, read_offline_history


@pytest.mark.timeout(300)
def test_cli_hebbian_circle_pgd_at_report(tmp_path):
    args = ["train", "configs/digits_hebbian.yaml", f"out_dir={tmp_path}/runs", f"data.root={tmp_path}/data",
            "train.epochs=2", "method.kwargs.hebbian_epochs=1", "method.kwargs.supervised=pgd_at",
            "method.attack.steps=2", "optim.name=circle", "optim.lr=0.3", "optim.langevin.radius=0.1",
            "optim.langevin.exclude=[features.0.*]",   # the Hebbian layer is not also on a circle
            "optim.langevin.temperature=1e-4", "optim.langevin.temperature_schedule=linear",
            "eval.max_samples=64", "eval.pgd_steps=5", "train.progress=false", "tracking.mode=offline"]
    assert main(args) == 0
    run = tmp_path / "runs" / "digits_hebbian"
    rep = json.loads((run / "report.json").read_text())
    opt = rep["optimizer"]
    assert opt["name"] == "circle" and opt["temperature_schedule"]["kind"] == "linear"
    assert opt["temperature_schedule"]["initial"] == 1e-4 and opt["final_temperature"] == 0.0
    assert 0 <= opt["max_constraint_violation"] < 1e-5
    heb = rep["hebbian"]
    assert heb["layer"] == "features.0.weight" and heb["updates"] == 23   # one epoch of 1437/64 batches
    assert 0.0 <= heb["unconverged_fraction"] < 1.0 and (run / "hebbian_filters.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert all("temperature" in r and r["constraint_violation"] < 1e-5 for r in rows)
    assert rep["clean_acc"] > 0.3    # 1 supervised epoch of PGD-AT, 64 test digits
    (wb,) = find_offline_runs(str(run))
    want = {"train/temperature", "train/constraint_violation", "optim/max_constraint_violation",
            "hebbian/unconverged_fraction", "hebbian/filters/path"}
    for _ in range(60):   # W&B's service may still be writing the last row (the one with the image)
        keys = set().union(*(h.keys() for h in read_offline_history(wb)))
        if want <= keys:
            break
        time.sleep(1)
    assert want <= keys, want - keys
