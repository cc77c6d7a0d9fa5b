"""`scaletrain sweep` and `scaletrain train ensemble.size=K` on real local Ray Tune (digits, tiny epochs)."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from scaletrain.cli import main
from scaletrain.errors import ConfigError
from scaletrain.orchestrate.sweep_spec import expand, load_sweep
from scaletrain.track.wandb_tracker import _iter_log_records, read_offline_history

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# tiny runs: standard training, quick PGD each epoch, a small final evaluation
TINY = {"method.name": "standard", "train.epochs": 2, "train.eval_every_epochs": 1, "train.eval_samples": 128,
        "train.eval_eps": 0.1, "train.eval_steps": 2, "eval.attacks": ["pgd"], "eval.eps": [0.0, 0.1],
        "eval.pgd_steps": 3, "eval.max_samples": 128, "model.width": 8, "engine.backend": "torch"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sweepdata") / "digits")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}})
    yield ray
    ray.shutdown()


def _sweep_file(tmp_path, data_root, **kw):
    doc = {"name": "s", "base": os.path.join(REPO, "configs", "default.yaml"), "out_dir": str(tmp_path / "sweeps"),
           "overrides": dict(TINY, **{"data.root": data_root}), "metric": "pgd/acc@0.1", "concurrency": 2}
    doc.update(kw)
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _rows(folder):
    with open(os.path.join(folder, "results.csv")) as f:
        return list(csv.DictReader(f))


def _run_records(folder):
    """(group, job_type, name) of every offline W&B run under `folder`, read from the .wandb files."""
    from wandb.proto import wandb_internal_pb2
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".wandb") and "offline-run-" in root:
                for data in _iter_log_records(os.path.join(root, name)):
                    rec = wandb_internal_pb2.Record()
                    rec.ParseFromString(data)
                    if rec.WhichOneof("record_type") == "run":
                        out.append((rec.run.run_group, rec.run.job_type, rec.run.display_name,
                                    os.path.join(root, name)))
                        break
    return out


def _wait_runs(folder, n, timeout=20):
    """W&B's service may still be writing the last run's file (the summary, with images)."""
    deadline = time.time() + timeout
    runs = _run_records(folder)
    while (len(runs) < n or "summary" not in [r[1] for r in runs]) and time.time() < deadline:
        time.sleep(0.5)
        runs = _run_records(folder)
    return runs


def test_sweep_file_errors_name_the_key(tmp_path, data_root):
    bad = [({"space": {"optim.lrr": {"grid": [0.1]}}}, "optim.lrr"),
           ({"space": {"optim.lr": {"gird": [0.1]}}}, "space.optim.lr"),
           ({"space": {"optim.lr": {"loguniform": [0.0, 1.0]}}}, "space.optim.lr.loguniform"),
           ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "search": "grid"}, "space.optim.lr.uniform"),
           ({"space": {"optim.lr": {"grid": [0.1]}}, "metric": "pgd/acc@0.25"}, "metric"),
           ({"space": {"optim.lr": {"grid": [0.1]}}, "scheduler": {"name": "asha", "metric": "clean_acc"}},
            "scheduler.metric"),
           ({"space": {"optim.lr": {"grid": [0.1]}}, "concurrency": -1}, "concurrency"),
           ({"space": {"optim.lr": {"grid": ["x"]}}}, "optim.lr"),
           ({"space": {"optim.lr": {"grid": [0.1, 0.2]}}, "search": "optuna"}, "space.optim.lr.grid"),
           ({"space": {"optim.lr": {"choice": [[1], [2]]}}, "search": "optuna"}, "space.optim.lr.choice"),
           ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "search": "optuna", "ensemble": {"size": 2}},
            "ensemble.size"),
           ({"space": {"optim.lrr": {"uniform": [0.1, 0.2]}}, "search": "optuna"}, "optim.lrr"),
           ({"space": {"optim.lr": {"uniform": [0.1, 0.2]}}, "search": "tpe"}, "search")]
    for kw, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_sweep(_sweep_file(tmp_path, data_root, **kw))
    rc = main(["sweep", _sweep_file(tmp_path, data_root, space={"optim.lr": {"gird": [1]}})])
    assert rc == 2


def test_expansion_is_deterministic_grid_times_samples(tmp_path, data_root):
    f = _sweep_file(tmp_path, data_root, space={"model.width": {"grid": [4, 8]}, "optim.lr": {"loguniform": [1e-4, 1e-2]},
                                                "seed": {"randint": [0, 100]}}, num_samples=3, seed=7)
    a, fa = expand(load_sweep(f))
    b, fb = expand(load_sweep(f, ["concurrency=1"]))       # a sweep key: same plan
    assert fa == fb and [t.params for t in a] == [t.params for t in b]
    assert len(a) == 6 and [t.params["model.width"] for t in a] == [4, 8] * 3
    assert all(1e-4 <= t.params["optim.lr"] <= 1e-2 and 0 <= t.params["seed"] < 100 for t in a)
    assert a[0].cfg["model"]["width"] == 4 and a[0].cfg["optim"]["lr"] == a[0].params["optim.lr"]
    _, fc = expand(load_sweep(f, ["train.epochs=3"]))      # an experiment override: another plan
    assert fc != fa


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_grid_with_asha_results_plots_and_wandb_group(ray_local, tmp_path, data_root):
    # lr=0 trials cannot learn: ASHA (rung at epoch 1, keep the best half) stops them early
    f = _sweep_file(tmp_path, data_root, name="grid", space={"optim.lr": {"grid": [0.01, 0.0]},
                                                             "model.width": {"grid": [8, 16]}},
                    scheduler={"name": "asha", "metric": "val_acc", "grace_period": 1, "reduction_factor": 2})
    assert main(["sweep", f, "tracking.wandb=true"]) == 0
    folder = str(tmp_path / "sweeps" / "grid")
    rows = _rows(folder)
    assert [(r["id"], float(r["optim.lr"]), int(r["model.width"])) for r in rows] == [
        ("t000", 0.01, 8), ("t001", 0.01, 16), ("t002", 0.0, 8), ("t003", 0.0, 16)]
    by = {r["id"]: r for r in rows}
    for t in ("t002", "t003"):            # stopped after the first epoch, no final evaluation
        assert by[t]["status"] == "stopped" and int(by[t]["epochs_done"]) == 1 and by[t]["pgd/acc@0.1"] == ""
        assert float(by[t]["val_acc"]) < 0.3
        assert not os.path.exists(os.path.join(folder, "trials", t, "report.json"))
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, rows   # (the worse of the two lr=0.01 trials may be stopped too: ASHA keeps the best half)
    for r in ok:                          # full trials: both epochs and the final report
        assert int(r["epochs_done"]) == 2 and float(r["clean_acc"]) > 0.5
        rep = json.loads(open(os.path.join(folder, "trials", r["id"], "report.json")).read())
        assert float(r["pgd/acc@0.1"]) == pytest.approx(rep["attacks"]["pgd"]["acc"][1])
    res = json.loads(open(os.path.join(folder, "results.json")).read())
    best = max(ok, key=lambda r: float(r["pgd/acc@0.1"]))
    assert res["best"]["id"] == best["id"] and res["counts"]["stopped"] >= 2
    md = open(os.path.join(folder, "summary.md")).read()
    assert f"Trial `{best['id']}`" in md and "optim.lr" in md
    for p in ("pgd_acc_at_0.1_vs_optim.lr.png", "pgd_acc_at_0.1_vs_model.width.png", "tradeoff.png"):
        assert os.path.getsize(os.path.join(folder, "plots", p)) > 1000
    # W&B: one offline run per trial, all in the sweep's group, plus the summary run
    runs = _wait_runs(folder, 5)
    # (a stopped trial's run is closed by the driver under the same id: possibly a second file)
    trial_runs = sorted({r[2] for r in runs if r[1] == "trial"})
    assert trial_runs == ["t000", "t001", "t002", "t003"] and {r[0] for r in runs} == {"grid"}
    assert [r[1] for r in runs].count("summary") == 1
    hist = read_offline_history([r[3] for r in runs if r[2] == ok[0]["id"]][0])
    curve = [h["eval/pgd_acc"] for h in hist if "eval/pgd_acc" in h]
    assert len(curve) == 2                # robustness during training, one point per epoch
    summary = read_offline_history([r[3] for r in runs if r[1] == "summary"][0])
    assert any("sweep/results" in k for h in summary for k in h)


SWEEP_DRIVER = "import sys; from scaletrain.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.ray
@pytest.mark.timeout(500)
def test_failed_trials_recorded_and_killed_driver_resumes_only_missing(tmp_path, data_root):
    # in_channels=3 fails at run time (the data has 1 channel): recorded as failed, the sweep goes on
    f = _sweep_file(tmp_path, data_root, name="res", concurrency=1, metric="clean_acc",
                    space={"model.in_channels": {"grid": [1, 1, 3]}},
                    overrides=dict(TINY, **{"data.root": data_root, "train.epochs": 1, "tracking.wandb": False}))
    folder = tmp_path / "sweeps" / "res"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("RAY_ADDRESS", None)
    p = subprocess.Popen([sys.executable, "-c", SWEEP_DRIVER, "sweep", f], env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = folder / "trials" / "t000" / "trial.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "the first trial never finished"
    os.killpg(p.pid, signal.SIGKILL)     # the driver and everything it started
    p.wait()
    done_before = {t for t in ("t000", "t001", "t002") if (folder / "trials" / t / "trial.json").exists()}
    assert "t002" not in done_before
    r = subprocess.run([sys.executable, "-c", SWEEP_DRIVER, "sweep", f], env=env, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    inv = [json.loads(line) for line in open(folder / "invocations.jsonl")]
    assert len(inv) == 2 and set(inv[1]["skipped"]) == done_before
    assert set(inv[1]["pending"]) == {"t000", "t001", "t002"} - done_before
    rows = {r["id"]: r for r in _rows(str(folder))}
    assert [rows[t]["status"] for t in ("t000", "t001", "t002")] == ["ok", "ok", "failed"]
    assert "model.in_channels" in rows["t002"]["error"] and "ConfigError" in rows["t002"]["error"]
    assert float(rows["t000"]["clean_acc"]) > 0.3 and float(rows["t001"]["clean_acc"]) > 0.3
    # the finished trial was not run again: its log has one epoch of steps, written once
    steps = [json.loads(x)["step"] for x in open(folder / "trials" / "t000" / "train_log.jsonl")]
    assert steps == sorted(set(steps))


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_train_ensemble_of_three(ray_local, tmp_path, data_root):
    args = ["train", os.path.join(REPO, "configs", "default.yaml"), "name=ens", f"out_dir={tmp_path}/runs",
            "ensemble.size=3", "ensemble.concurrency=2", "tracking.wandb=true"]
    args += [f"{k}={json.dumps(v)}" for k, v in dict(TINY, **{"data.root": data_root, "train.epochs": 1}).items()]
    assert main(args) == 0
    folder = tmp_path / "runs" / "ens"
    rows = _rows(str(folder))
    assert [(r["id"], r["seed"], r["status"]) for r in rows] == [("c000-m0", "0", "ok"), ("c000-m1", "1", "ok"),
                                                                 ("c000-m2", "2", "ok")]
    rep = json.loads((folder / "ensembles" / "c000" / "report.json").read_text())
    members = [json.loads((folder / "trials" / r["id"] / "report.json").read_text()) for r in rows]
    accs = [m["clean_acc"] for m in members]
    assert len(rep["members"]) == 3
    assert rep["mean"]["clean_acc"] == pytest.approx(sum(accs) / 3)
    mu = sum(accs) / 3
    assert rep["std"]["clean_acc"] == pytest.approx((sum((a - mu) ** 2 for a in accs) / 2) ** 0.5)
    assert 0.0 <= rep["ensemble_metrics"]["pgd/acc@0.1"] <= rep["ensemble_metrics"]["clean_acc"]
    assert rep["ensemble"]["clean_acc"] >= min(accs) - 0.05    # averaging logits does not hurt much
    md = (folder / "summary.md").read_text()
    assert "Ensembles" in md and "+/-" in md
    kinds = sorted(r[1] for r in _wait_runs(str(folder), 5))
    assert kinds == ["ensemble", "member", "member", "member", "summary"]


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_two_worker_trial_fits_a_torchtrainer_inside_tune(ray_local, tmp_path, data_root):
    # 2 workers x 0.5 logical CPU + the trial's 0.01: fits the 2-CPU local Ray (no deadlock)
    # the second trial diverges (optim.lr=1e30): its workers' loss guard fails it, with the error
    f = _sweep_file(tmp_path, data_root, name="mw", concurrency=1, metric="clean_acc",
                    space={"optim.lr": {"grid": [0.01, 1e30]}}, resources={"workers": 2, "cpus_per_worker": 0.5},
                    overrides=dict(TINY, **{"data.root": data_root, "tracking.wandb": False,
                                            "optim.schedule": "constant"}))
    assert main(["sweep", f]) == 0
    folder = tmp_path / "sweeps" / "mw"
    row, nan = _rows(str(folder))
    assert nan["status"] == "failed" and nan["error"].startswith("FloatingPointError: training loss is nan"), nan
    assert row["status"] == "ok" and float(row["clean_acc"]) > 0.5
    rep = json.loads((folder / "trials" / "t000" / "report.json").read_text())
    assert rep["train"]["world_size"] == 2
    # the workers' epoch metrics reached Tune (TuneReportCallback): epochs 1 and 2, with the quick eval
    progress = [p for p in (folder / "ray").rglob("progress.csv")]
    with open(progress[0]) as fh:
        seen = [r for r in csv.DictReader(fh) if r.get("val_acc")]
    assert [int(float(r["epochs_done"])) for r in seen] == [1, 2]


def test_optuna_proposals_are_seeded_and_inside_the_space(tmp_path, data_root):
    pytest.importorskip("optuna")
    from scaletrain.orchestrate import sweep_optuna
    f = _sweep_file(tmp_path, data_root, search="optuna", seed=3, num_samples=4,
                    space={"optim.lr": {"loguniform": [1e-4, 1e-2]}, "model.width": {"randint": [4, 9]},
                           "method.name": {"choice": ["standard", "pgd_at"]}})
    spec = load_sweep(f)
    assert expand(spec)[0] == []                      # no fixed plan: Optuna proposes during the sweep

    def proposals(seed):
        spec.sweep.seed = seed
        alg = sweep_optuna.searcher(spec, [], [], lambda *a: None)
        alg.set_search_properties(None, None, sweep_optuna.param_space(spec))
        return [alg.suggest(f"x{i}") for i in range(4)]
    a, b, c = proposals(3), proposals(3), proposals(4)
    assert a == b and a != c
    for p in a:
        assert 1e-4 <= p["optim.lr"] <= 1e-2 and 4 <= p["model.width"] <= 8
        assert p["method.name"] in ("standard", "pgd_at")


def test_optuna_missing_exits_2_saying_how_to_install(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    f = _sweep_file(tmp_path, data_root, search="optuna", num_samples=2,
                    space={"optim.lr": {"loguniform": [1e-4, 1e-2]}})
    assert main(["sweep", f]) == 2
    err = capsys.readouterr().err
    assert "search: optuna" in err and "pip install optuna" in err
    assert not os.path.exists(tmp_path / "sweeps" / "s" / "trials")     # stopped before any trial


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_optuna_sweep_on_ray_tune(ray_local, tmp_path, data_root):
    pytest.importorskip("optuna")
    f = _sweep_file(tmp_path, data_root, name="opt", search="optuna", num_samples=2, seed=1, concurrency=2,
                    metric="clean_acc", space={"optim.lr": {"loguniform": [3e-3, 3e-2]},
                                               "model.width": {"randint": [6, 10]}},
                    overrides=dict(TINY, **{"data.root": data_root, "train.epochs": 1, "tracking.wandb": False,
                                            "train.eval_every_epochs": 0}))
    assert main(["sweep", f]) == 0
    folder = tmp_path / "sweeps" / "opt"
    rows = _rows(str(folder))
    assert sorted(r["id"] for r in rows) == ["t000", "t001"]
    for r in rows:
        assert r["status"] == "ok" and float(r["clean_acc"]) > 0.3, r
        assert 3e-3 <= float(r["optim.lr"]) <= 3e-2 and 6 <= int(r["model.width"]) <= 9
        cfg = yaml.safe_load((folder / "trials" / r["id"] / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == pytest.approx(float(r["optim.lr"])) and cfg["model"]["width"] == int(r["model.width"])
    assert rows[0]["optim.lr"] != rows[1]["optim.lr"]     # two distinct proposals
    res = json.loads((folder / "results.json").read_text())
    assert res["best"]["clean_acc"] == max(float(r["clean_acc"]) for r in rows)
    # resume: t001 as if cut off before it ended (only its claimed values are left); the same command
    # tells Optuna t000, re-runs t001 with its own values in its own folder, and nothing else
    for p in (folder / "trials" / "t001").iterdir():
        if p.name != "trial_params.json":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert main(["sweep", f]) == 0
    inv = [json.loads(line) for line in open(folder / "invocations.jsonl")]
    assert inv[1]["to_run"] == 1 and inv[1]["pending"] == ["t001"] and inv[1]["skipped"] == ["t000"]
    again = {r["id"]: r for r in _rows(str(folder))}
    assert sorted(again) == ["t000", "t001"] and again["t001"]["status"] == "ok"
    before = {r["id"]: r for r in rows}
    assert again["t001"]["optim.lr"] == before["t001"]["optim.lr"]
    assert again["t001"]["model.width"] == before["t001"]["model.width"]


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_nan_loss_trial_is_failed_and_the_rest_finish(ray_local, tmp_path, data_root):
    # optim.lr=1e30: the weights are NaN within a few steps; no loss is logged in this epoch
    # (log_every > its 23 steps): the guard's epoch-end check ends that trial only
    f = _sweep_file(tmp_path, data_root, name="nan", concurrency=2, metric="clean_acc",
                    space={"optim.lr": {"grid": [0.01, 1e30]}},
                    overrides=dict(TINY, **{"data.root": data_root, "train.epochs": 1, "tracking.wandb": False,
                                            "optim.schedule": "constant", "train.log_every": 1000}))
    assert main(["sweep", f]) == 0
    rows = {r["id"]: r for r in _rows(str(tmp_path / "sweeps" / "nan"))}
    assert rows["t000"]["status"] == "ok" and float(rows["t000"]["clean_acc"]) > 0.5
    assert rows["t001"]["status"] == "failed"
    assert rows["t001"]["error"].startswith("FloatingPointError: training loss is non-finite"), rows["t001"]["error"]


def test_concurrent_runs_with_one_name_claim_distinct_folders(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from scaletrain.config import load_config
    from scaletrain.runs import resolve_run_dir
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "report.json").write_text("{}")          # a finished run already holds 'x'
    cfg = load_config(None, [f"out_dir={tmp_path}", "name=x"])
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: resolve_run_dir(cfg), range(16)))
    assert len(set(got)) == 16 and tmp_path / "x" not in got
    assert sorted(p.name for p in got) == sorted(f"x-{i}" for i in range(2, 18))
