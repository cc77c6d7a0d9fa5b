"""`scaletrain sweep SWEEP.yaml [key=value ...]` and `scaletrain train ensemble.size=K`: trials on Ray Tune.

    summary = run_sweep("configs/sweeps/digits_eps.yaml", ["concurrency=1"])

The driver expands the sweep file into trials (sweep_spec.py), skips those already finished
(each trial writes `trials/<id>/trial.json` when it ends: a killed driver restarted with the
same command runs only the rest), and runs the pending ones as Ray Tune trials. Each trial
is a full scaletrain run in its own folder `trials/<id>/` (config, checkpoints, report,
W&B run, `resume=auto`, so a trial cut off with its driver continues from its checkpoint):
with one worker the Tune function trains in its own process; with several it builds and
fits a Ray Train `TorchTrainer` (the Train V2 pattern; Tune's `TuneReportCallback` forwards
the workers' metrics). Metrics reach Tune at every epoch end (`val_acc`, `val_pgd_acc` from
the quick evaluation, training loss/acc, `epochs_done`), which is what ASHA acts on.

A trial that raises (a config that fails at run time, a non-finite loss) is recorded as
`failed` with its error, and the sweep goes on. A trial ASHA stops is recorded as `stopped`
with its last metrics. Ensembles (`ensemble.size: K`) run K seeds per configuration as
trials, then evaluate each configuration's members and their averaged-logit ensemble with
the evaluation suite (`ensembles/<config>/`).

Resources (2-core machines): Ray's defaults (1 CPU per trial plus 1 per Train worker) can
leave a 2-worker trial waiting forever on 2 cores. Here a single-worker trial asks for
`resources.cpus_per_worker` (default 1) and nothing else; a multi-worker trial's own process
asks for a token 0.01 CPU and its workers for `cpus_per_worker` each; a local Ray is started
with logical CPUs = max(cores, concurrency x CPUs per trial). Each run uses
`engine.cpu_threads` (default 1) torch threads, so logical CPUs map to real threads.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
import traceback
from dataclasses import asdict
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from ..config import config_from_dict, to_dict
from ..config.schema import SweepConfig
from ..engine.hooks import use_hooks
from ..errors import UserError
from ..run import train_worker
from ..runs import resolve_run_dir
from .ray_train import _absolute
from . import sweep_optuna
from .sweep_spec import SweepSpec, Trial, expand, load_sweep, probe_points, trial_config
from .trial_failures import FiniteLossGuard, error_line

RECORD = "trial.json"
DRIVER_CPUS = 0.01
TERMINAL = ("ok", "failed", "stopped")


# ---- inside a trial ---------------------------------------------------------------------------
class TuneReportHook:
    """Trainer hook: each epoch's metrics to Ray Tune (single-worker trials)."""

    def on_epoch_end(self, trainer, metrics):
        from ray import tune
        tune.report(epoch_metrics(trainer, metrics))


def epoch_metrics(trainer, metrics: Dict[str, Any]) -> Dict[str, Any]:
    out = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    done = sum(s.epochs for s in trainer.stages[:metrics.get("stage", 0)]) + metrics.get("epoch", 0) + 1
    out["epochs_done"] = done
    return out


def _write_json(path: str, data: Dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def run_trial(config: Dict[str, Any], trials: Dict[str, Dict[str, Any]]) -> None:
    """The Tune function of one planned trial (`config["trial"]` is the trial id)."""
    run_one(trials[config["trial"]])


def run_one(trial: Dict[str, Any]) -> None:
    """Run one trial (a `Trial` as a dict) inside a Tune trial process; write its `trial.json`."""
    from ray import tune

    from ..evaluate.ensemble import scalar_metrics
    cfg = config_from_dict(trial["cfg"])
    run_dir = os.path.join(cfg.out_dir, cfg.name)
    record = {"id": trial["id"], "params": trial["params"], "config_id": trial["config_id"],
              "member": trial["member"], "run_dir": run_dir, "status": "running", "error": None}
    last: Dict[str, Any] = {}

    class Last:
        def on_epoch_end(self, trainer, metrics):
            last.update(epoch_metrics(trainer, metrics))

    # When Tune stops this trial (ASHA) it ends the actor; this thread (a daemon) would die
    # mid-epoch, before the trial record and the W&B run are closed. A non-daemon guard keeps
    # the process alive until this function has finished (the interpreter waits for it);
    # a reused actor waits for the thread too (TUNE_FUNCTION_THREAD_TIMEOUT_S, read per reset).
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = "120"
    finished = threading.Event()
    threading.Thread(target=finished.wait, args=(60,), name="scaletrain-trial-guard", daemon=False).start()
    t0 = time.time()
    try:
        with use_hooks(FiniteLossGuard(), Last()):
            if cfg.engine.workers > 1:
                from ray.tune.integration.ray_train import TuneReportCallback

                from .ray_train import run_with_ray
                report = run_with_ray(cfg, worker=train_worker, run_dir=run_dir, callbacks=[TuneReportCallback()],
                                      hooks=[FiniteLossGuard()])     # the workers' own guard
            else:
                # a fresh rendezvous port per trial: the trial process may be reused, and it may
                # have inherited the driver's MASTER_PORT (concurrent trials must not share one)
                for key in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                    os.environ.pop(key, None)
                with use_hooks(TuneReportHook()):
                    report = train_worker(cfg, run_dir=run_dir)
        metrics = dict(last, **scalar_metrics(report))
        metrics["train_seconds"] = report.get("train", {}).get("seconds")
        record.update(status="ok", metrics=metrics)
    except SystemExit:                          # Tune stopped the trial (ASHA)
        record.update(status="stopped", metrics=dict(last), seconds=round(time.time() - t0, 3))
        _write_json(os.path.join(run_dir, RECORD), record)
        _close_wandb(0)
        finished.set()
        raise
    except Exception as e:  # noqa: BLE001 - a failing trial is a result, the sweep goes on
        record.update(status="failed", metrics=dict(last), error=error_line(e),
                      traceback=traceback.format_exc()[-4000:])
        _close_wandb(1)
    record["seconds"] = round(time.time() - t0, 3)
    _write_json(os.path.join(run_dir, RECORD), record)
    finished.set()
    if record["status"] == "ok":
        tune.report({k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))})


def _close_wandb(exit_code: int) -> None:
    """A trial that ends early still closes its W&B run (its .wandb file is then complete)."""
    import sys
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.run.finish(exit_code=exit_code)


# ---- the driver -------------------------------------------------------------------------------
def read_record(folder: str, trial_id: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(folder, "trials", trial_id, RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _check_plan(spec: SweepSpec, trials: List[Trial], fingerprint: str) -> None:
    plan_file = os.path.join(spec.folder, "plan.json")
    if os.path.exists(plan_file):
        with open(plan_file) as f:
            old = json.load(f)
        if old.get("fingerprint") != fingerprint:
            raise UserError(f"{spec.folder} holds another sweep (its trials or overrides differ): give the sweep "
                            f"a new name (name=...) or remove the folder")
        return
    _write_json(plan_file, {"fingerprint": fingerprint, "name": spec.sweep.name,
                            "sweep": to_dict(spec.sweep), "trials": [[t.id, t.params] for t in trials]})


def _trial_cpus(spec: SweepSpec) -> Dict[str, float]:
    r = spec.sweep.resources
    if r.workers == 1:
        res = {"CPU": float(r.cpus_per_worker)}
        if r.gpus_per_worker:
            res["GPU"] = float(r.gpus_per_worker)
        return res
    return {"CPU": DRIVER_CPUS}


def _per_trial(spec: SweepSpec) -> float:
    r = spec.sweep.resources
    return r.workers * r.cpus_per_worker + (DRIVER_CPUS if r.workers > 1 else 0.0)


def _concurrency(spec: SweepSpec, n_pending: int) -> int:
    c = int(spec.sweep.concurrency or spec.sweep.ensemble.concurrency)
    if c <= 0:
        c = max(1, int((os.cpu_count() or 1) // _per_trial(spec)))
    return max(1, min(c, n_pending))


def _connect(spec: SweepSpec, concurrency: int) -> None:
    import ray
    if ray.is_initialized():
        return
    address = spec.sweep.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    need = int(math.ceil(concurrency * _per_trial(spec)))
    env = {k: os.environ[k] for k in ("DS_ACCELERATOR", "PYTHONPATH") if k in os.environ}
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
             runtime_env={"env_vars": env} if env else None, log_to_driver=False)


def _scheduler(spec: SweepSpec):
    sch = spec.sweep.scheduler
    if sch.name != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler
    # time = epochs done. Rungs lie strictly before the last epoch (Ray's ASHA puts one at max_t
    # itself, where stopping would only skip the trial's final evaluation): max_t - 1 is passed,
    # and stop_last_trials=False lets trials past it run to their end and be evaluated.
    max_t = int(sch.max_t or spec.base.train.epochs)
    return ASHAScheduler(time_attr="epochs_done", metric=sch.metric or spec.sweep.metric, mode=sch.mode,
                         max_t=max_t - 1, grace_period=int(sch.grace_period),
                         reduction_factor=int(sch.reduction_factor), stop_last_trials=False)


def _tune(spec: SweepSpec, pending: List[Trial], invocation: int, optuna: Optional[Dict[str, Any]] = None
          ) -> Dict[str, Dict[str, Any]]:
    """Run the pending trials; returns Tune's view (status, error, last metrics) per trial id.
    `optuna`: {"n": trials to run, "told": finished trials, "unfinished": {values: id}} (search: optuna)."""
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")   # metrics differ per report
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from ray import tune
    concurrency = _concurrency(spec, optuna["n"] if optuna else len(pending))
    _connect(spec, concurrency)
    if optuna:
        trainable = tune.with_parameters(sweep_optuna.run_optuna_trial, spec=spec, run=run_one,
                                         unfinished=optuna["unfinished"])
        space, samples = sweep_optuna.param_space(spec), optuna["n"]
        alg = sweep_optuna.searcher(spec, optuna["told"], [t.params for t in pending], read_record)
    else:
        trials = {t.id: asdict(t) for t in pending}
        trainable = tune.with_parameters(run_trial, trials=trials)
        space, samples, alg = {"trial": tune.grid_search([t.id for t in pending])}, 1, None
    tuner = tune.Tuner(
        tune.with_resources(trainable, _trial_cpus(spec)), param_space=space,
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, scheduler=_scheduler(spec),
                                    search_alg=alg, num_samples=samples, reuse_actors=True),
        run_config=tune.RunConfig(name=f"tune-{invocation}", storage_path=os.path.join(spec.folder, "ray"),
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
    )
    grid = tuner.fit()
    ids = sweep_optuna.tune_ids(spec) if optuna else {}
    out = {}
    for res in grid:
        tid = res.config.get("trial") or ids.get((res.metrics or {}).get("trial_id"))
        if tid:
            out[tid] = {"error": str(res.error).splitlines()[0] if res.error else None,
                        "metrics": res.metrics or {}}
    return out


def _prepare_data(trials: List[Trial]) -> None:
    """Write shards once in the driver, not concurrently in trials."""
    from ..data import prepare
    seen = set()
    for t in trials:
        key = json.dumps(t.cfg["data"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            prepare(config_from_dict(t.cfg).data, progress=False)


def _absolute_trials(trials: List[Trial]) -> None:
    for t in trials:   # Tune runs trials in their own working folders
        t.cfg = to_dict(_absolute(config_from_dict(t.cfg)))


def execute(spec: SweepSpec) -> Dict[str, Any]:
    """Run (or continue) the sweep `spec`; write the results folder; return its summary."""
    from .results import evaluate_ensembles, write_results
    optuna = spec.sweep.search == "optuna"
    if optuna:
        sweep_optuna.check_installed()
    trials, fingerprint = expand(spec)
    os.makedirs(os.path.join(spec.folder, "trials"), exist_ok=True)
    _check_plan(spec, trials, fingerprint)
    if optuna:      # the trials so far; Optuna proposes the rest while the sweep runs
        trials = sweep_optuna.known_trials(spec)
    _absolute_trials(trials)
    done = {t.id: read_record(spec.folder, t.id) for t in trials}
    pending = [t for t in trials if not (done[t.id] and done[t.id]["status"] in TERMINAL)]
    n_new = int(spec.sweep.num_samples) - (len(trials) - len(pending)) if optuna else len(pending)
    log = os.path.join(spec.folder, "invocations.jsonl")
    invocation = sum(1 for _ in open(log)) if os.path.exists(log) else 0
    with open(log, "a") as f:
        f.write(json.dumps({"time": time.time(), "pending": [t.id for t in pending], "to_run": n_new,
                            "skipped": [t.id for t in trials if t not in pending]}) + "\n")
    print(f"sweep {spec.sweep.name}: {len(trials)} trials{' so far' if optuna else ''}, "
          f"{len(trials) - len(pending)} already finished, "
          f"running {n_new}; folder {spec.folder}", flush=True)
    if n_new > 0:
        if optuna:
            told, unfinished = sweep_optuna.history(spec, done, TERMINAL)
            probes = [Trial(f"probe{i}", p, "", 0, trial_config(spec, f"probe{i}", p, "trial"))
                      for i, p in enumerate(probe_points(spec.sweep))]
            _absolute_trials(probes)
            _prepare_data(probes)
            seen = _tune(spec, pending, invocation, {"n": n_new, "told": told, "unfinished": unfinished})
            trials = sweep_optuna.known_trials(spec)
            _absolute_trials(trials)
            again = {t.id for t in pending}
            ran = [t for t in trials if t.id not in done or t.id in again]   # not finished before
        else:
            _prepare_data(pending)
            seen = _tune(spec, pending, invocation)
            ran = pending
        for t in ran:   # trials that wrote no record: stopped by the scheduler, or died
            if read_record(spec.folder, t.id) is None and t.id in seen:
                info = seen[t.id]
                status = "failed" if info["error"] else "stopped"
                _write_json(os.path.join(spec.folder, "trials", t.id, RECORD),
                            {"id": t.id, "params": t.params, "config_id": t.config_id, "member": t.member,
                             "run_dir": os.path.join(spec.folder, "trials", t.id), "status": status,
                             "error": info["error"], "metrics": {k: v for k, v in info["metrics"].items()
                                                                 if isinstance(v, (int, float))}})
        _close_cut_runs(spec, ran)
    records = [read_record(spec.folder, t.id) or {"id": t.id, "params": t.params, "status": "missing"}
               for t in trials]
    ensembles = evaluate_ensembles(spec, trials, records) if spec.sweep.ensemble.size > 1 else []
    return write_results(spec, records, ensembles)


def _close_cut_runs(spec: SweepSpec, ran: List[Trial]) -> None:
    """Tune ends the process of a trial it stops, which can cut the trial's W&B run before
    W&B wrote it out. The driver reopens each stopped or failed trial's run (same id, from
    `wandb_run_id.txt`), records the status and last metrics in its summary, and closes it."""
    from ..track import Tracker
    for t in ran:
        rec = read_record(spec.folder, t.id)
        cfg = config_from_dict(t.cfg)
        run_dir = os.path.join(spec.folder, "trials", t.id)
        if not rec or rec["status"] == "ok" or not cfg.tracking.wandb or \
                not os.path.exists(os.path.join(run_dir, "wandb_run_id.txt")):
            continue
        tr = Tracker(cfg.tracking, run_dir, to_dict(cfg), name=t.id, job_type=cfg.tracking.job_type)
        if tr.run is not None:
            tr.run.summary["trial/status"] = rec["status"]
            if rec.get("error"):
                tr.run.summary["trial/error"] = rec["error"]
            for k, v in (rec.get("metrics") or {}).items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    tr.run.summary[f"trial/{k}"] = v
        tr.finish()


def run_sweep(path: str, argv=()) -> Dict[str, Any]:
    return execute(load_sweep(path, argv))


def run_ensemble(cfg) -> Dict[str, Any]:
    """`scaletrain train ... ensemble.size=K`: K seeds as trials, then the ensemble evaluation.
    Outputs go to `<out_dir>/<name>/` (members under `trials/`, the ensemble under `ensembles/`)."""
    folder = resolve_run_dir(cfg)
    e = cfg.engine
    sweep = OmegaConf.structured(SweepConfig)
    sweep.name, sweep.out_dir = folder.name, str(folder.parent)
    sweep.ensemble.size, sweep.ensemble.concurrency = int(cfg.ensemble.size), int(cfg.ensemble.concurrency)
    sweep.resources.workers, sweep.resources.cpus_per_worker = int(e.workers), float(e.cpus_per_worker)
    sweep.resources.gpus_per_worker, sweep.ray_address = float(e.gpus_per_worker), e.ray_address
    base = cfg.copy()
    base.ensemble.size = 1
    summary = execute(SweepSpec(sweep, base, "", [], str(folder.resolve())))
    if not summary["ensembles"]:
        raise UserError(f"ensemble {folder}: not every member finished; see {folder}/results.csv")
    return summary["ensembles"][0]["report"]
