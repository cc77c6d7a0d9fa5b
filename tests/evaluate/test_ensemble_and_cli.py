"""Ensembles (members, mean +/- std, averaged-logits robustness) and eval_main."""
import copy
import json
import os

import pytest
import torch

from scaletrain.config.schema import EvalConfig
from scaletrain.evaluate import evaluate_model, format_table, write_report
from scaletrain.evaluate.ensemble import AveragedLogits, evaluate_ensemble, scalar_metrics

CFG = dict(attacks=["pgd"], eps=[0.0, 0.1], pgd_steps=3, batch_size=48)


def perturbed(model, scale, seed):
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return m.eval()


def test_identical_members_equal_single_model(digits_model, digits_eval):
    cfg = EvalConfig(**CFG)
    single = evaluate_model(digits_model, digits_eval, cfg, progress=False)
    ens = evaluate_ensemble([digits_model, copy.deepcopy(digits_model)], digits_eval, cfg, progress=False)
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert strip(ens["ensemble"]) == strip(single)     # mean of identical logits = the logits
    assert all(v == 0 for v in ens["std"].values())
    assert ens["mean"] == pytest.approx(scalar_metrics(single))


def test_ensemble_statistics(tmp_path, digits_model, digits_eval):
    members = [digits_model, perturbed(digits_model, 0.3, 1), perturbed(digits_model, 0.3, 2)]
    cfg = EvalConfig(**CFG)
    ens = evaluate_ensemble(members, digits_eval, cfg, names=["a", "b", "c"], progress=False)
    per = [scalar_metrics(r) for r in ens["members"]]
    for k in ("clean_acc", "pgd/acc@0.1", "robustness_score"):
        vals = [p[k] for p in per]
        assert ens["mean"][k] == pytest.approx(sum(vals) / 3)
        assert ens["std"][k] == pytest.approx(torch.tensor(vals, dtype=torch.float64).std().item())
    assert len(set(p["clean_acc"] for p in per)) > 1 or len(set(p["pgd/acc@0.1"] for p in per)) > 1
    # the ensemble report is the averaged-logits model, attacked end to end
    direct = evaluate_model(AveragedLogits(members), digits_eval, cfg, progress=False)
    assert ens["ensemble"]["attacks"] == direct["attacks"]
    assert ens["robustness_score"] == direct["robustness_score"]
    paths = write_report(ens, str(tmp_path))
    md = open(paths["md"]).read()
    assert "Ensemble summary" in md and "Member 2: c" in md and "| pgd/acc@0.1 |" in md
    assert "ensemble of 3" in format_table(ens)
    assert json.load(open(paths["json"]))["names"] == ["a", "b", "c"]


@pytest.fixture
def run_dirs(tmp_path, digits_model, digits_eval, monkeypatch):
    """Two finished-run folders (config.yaml + model.pt); the test split comes from digits_eval."""
    from scaletrain.config import load_config, save_config
    import scaletrain.data as data
    cfg = load_config(None, ["model.width=16", "eval.pgd_steps=2", "eval.eps=[0.0,0.1]", "eval.batch_size=32",
                             "eval.attacks=[pgd]", "tracking.wandb=false"])
    dirs = []
    for i, m in enumerate([digits_model, perturbed(digits_model, 0.2, 5)]):
        d = tmp_path / f"run{i}"
        d.mkdir()
        save_config(cfg, str(d / "config.yaml"))
        torch.save(m.state_dict(), d / "model.pt")
        dirs.append(d)
    monkeypatch.setattr(data, "eval_loader", lambda *a, **k: iter(digits_eval))
    return dirs


def test_eval_main_single_and_ensemble(run_dirs, capsys, digits_model, digits_eval):
    from scaletrain.evaluate.cli import eval_main
    assert eval_main([str(run_dirs[0]), "eval.pgd_steps=3", "--no-progress"]) == 0
    out = run_dirs[0] / "eval"
    rep = json.load(open(out / "report.json"))
    assert (out / "report.md").exists() and (out / "robustness.png").exists()
    assert rep["config"]["pgd_steps"] == 3 and rep["n"] == 96
    expected = evaluate_model(digits_model, digits_eval, EvalConfig(**{**CFG, "eps": [0.0, 0.1], "batch_size": 32}),
                              progress=False)
    assert rep["attacks"]["pgd"]["acc"] == expected["attacks"]["pgd"]["acc"]
    assert "robustness score" in capsys.readouterr().out
    assert eval_main([str(run_dirs[0] / "model.pt"), str(run_dirs[1]), "--out", str(run_dirs[0] / "ens"),
                      "--no-progress"]) == 0
    ens = json.load(open(run_dirs[0] / "ens" / "report.json"))
    assert len(ens["members"]) == 2 and "ensemble" in ens


def test_eval_main_user_errors(run_dirs, tmp_path, capsys):
    from scaletrain.evaluate.cli import eval_main
    assert eval_main([str(tmp_path / "missing")]) == 2
    assert eval_main([str(run_dirs[0]), "eval.attacks=[nope]", "--no-progress"]) == 2
    assert eval_main([str(run_dirs[0]), "eval.nokey=1"]) == 2
    assert eval_main(["eval.pgd_steps=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert "eval.attacks" in err[1]


def test_ensemble_eval_logs_to_wandb(run_dirs):
    """`scaletrain eval A B` with W&B on records the averaged-logits ensemble's curve and the
    members' mean/std (an ensemble report has no top-level worst case: it used to raise)."""
    import time
    from scaletrain.evaluate.cli import eval_main
    from scaletrain.track.wandb_tracker import find_offline_runs, read_offline_history
    out = run_dirs[0] / "ens-wandb"
    assert eval_main(["--out", str(out), "--no-progress", str(run_dirs[0]), str(run_dirs[1]),
                      "tracking.wandb=true", "tracking.mode=offline"]) == 0
    ens = json.load(open(out / "report.json"))
    keys, deadline = set(), time.time() + 60
    while time.time() < deadline:   # W&B's offline writer may still be flushing its last rows
        files = find_offline_runs(str(out))
        keys = {k for row in (read_offline_history(files[0]) if files else []) for k in row}
        if "eval/members_mean/clean_acc" in keys:
            break
        time.sleep(2)
    assert "eval/ensemble/pgd/acc@0.1" in keys and "eval/members_std/clean_acc" in keys, sorted(keys)
    rows = read_offline_history(find_offline_runs(str(out))[0])
    got = [r["eval/ensemble/clean_acc"] for r in rows if "eval/ensemble/clean_acc" in r]
    assert got == [pytest.approx(ens["ensemble"]["clean_acc"])]
