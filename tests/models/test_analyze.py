"""`scaletrain analyze`: a trained NODE run gets its sensitivity section (report, json, W&B)."""
import json
import time

import pytest

from scaletrain.cli import main
from scaletrain.config import load_config
from scaletrain.errors import ConfigError
from scaletrain.evaluate.sensitivity import integration_settings


@pytest.mark.timeout(300)
def test_analyze_writes_report_section_and_wandb(tmp_path, capsys):
    from scaletrain.run import train
    from scaletrain.track.wandb_tracker import find_offline_runs, read_offline_history
    cfg = load_config(None, [f"out_dir={tmp_path}", "name=node", f"data.root={tmp_path / 'data'}",
                             "model.name=node_cnn", "model.width=4", "model.kwargs={solver: rk4, steps: 2}",
                             "method.name=standard", "train.epochs=1", "train.progress=false",
                             "eval.attacks=[fgsm]", "eval.eps=[0.0,0.1]", "eval.max_samples=64",
                             "tracking.wandb=false", "engine.backend=torch"])
    train(cfg)
    run = tmp_path / "node"
    rc = main(["analyze", str(run), "--max-samples", "64", "--trials", "2", "--pgd-steps", "2",
               "--weight-rel", "0,0.05,0.5", "--lipschitz-steps", "3", "tracking.wandb=true",
               "tracking.mode=offline"])
    assert rc == 0
    rep = json.load(open(run / "report.json"))
    s = rep["sensitivity"]
    assert s["n"] == 64 and 0 <= s["clean_acc"] <= 1 and s["grad_l2_mean"] > 0
    assert s["lipschitz_eps"] == 0.1 and s["lipschitz_max"] >= s["lipschitz_mean"] > 0
    rows = s["weight_perturbation"]["rows"]
    assert rows[0]["output_change"] == 0 and rows[0]["acc"] == pytest.approx(s["clean_acc"])   # r = 0
    assert 0 < rows[1]["output_change"] < rows[2]["output_change"]                          # grows with r
    sweep = s["integration"]
    assert [r["steps"] for r in sweep["rows"]] == [1, 2, 4, 8]
    assert [r["nfe"] for r in sweep["rows"]] == [4, 8, 16, 32]                               # RK4: 4 per step
    assert all(0 <= r["robust_acc"] <= r["clean_acc"] + 1e-9 for r in sweep["rows"])
    trained = [r for r in sweep["rows"] if r["steps"] == 2][0]
    assert trained["clean_acc"] == pytest.approx(s["clean_acc"])   # the sweep restores the setting
    md = (run / "report.md").read_text()
    assert "## Sensitivity analysis" in md and "### Discretisation" in md and "## Results" in md
    assert json.load(open(run / "sensitivity.json"))["n"] == 64
    def logged():  # W&B's service may still be writing its offline log right after finish() on a loaded machine
        hist = [row for f in find_offline_runs(str(run)) for row in read_offline_history(f)]
        return any(row.get("sensitivity/lipschitz_mean") == pytest.approx(s["lipschitz_mean"]) for row in hist), hist
    deadline = time.time() + 60
    while not logged()[0] and time.time() < deadline:
        time.sleep(2)
    ok, hist = logged()
    assert ok, (find_offline_runs(str(run)), [sorted(r)[:4] for r in hist])
    # user errors: one line, exit 2
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert main(["analyze", str(run), "--weight-rel", "a,b"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_integration_settings_and_eot_required():
    assert integration_settings({"solver": "rk4", "steps": 4}) == [{"steps": k} for k in (1, 2, 4, 8, 16)]
    assert [s["rtol"] for s in integration_settings({"solver": "dopri5", "steps": 4})] == [0.1, 0.01, 0.001, 0.0001]
    assert [s["step_size"] for s in integration_settings({"solver": "euler", "steps": 8, "step_size": 0.1},
                                                         shared_depth=False)] == pytest.approx([0.05, 0.075, 0.1,
                                                                                                0.15, 0.2])
    with pytest.raises(ConfigError, match="'eval.eot_samples'"):
        load_config(None, ["model.name=sde_cnn", "model.kwargs={test_noise: true}"])
    load_config(None, ["model.name=sde_cnn", "model.kwargs={test_noise: true}", "eval.eot_samples=4"])
