"""`search: optuna`: Optuna's TPE sampler drawing the sweep's trials through Ray Tune's `OptunaSearch`.

    space: {optim.lr: {loguniform: [1e-4, 1e-2]}, model.width: {choice: [8, 16]}}
    search: optuna      # num_samples = trials in all; seed = the sampler's seed

Random and grid search fix every trial's values before Ray starts (sweep_spec.py). A model-based
search cannot: Optuna proposes each trial from the results so far (TPE, Bergstra et al. 2011,
"Algorithms for Hyper-Parameter Optimization"; Optuna: Akiba et al. 2019). So here the Tune
function receives the proposed values, claims the next free trial folder (`t000`, `t001`, ...:
`os.mkdir` is atomic, so concurrent trials never share one), writes the values to
`trial_params.json` and runs the trial like any other (sweep.run_one).

Mapping (Ray docs, https://docs.ray.io/en/latest/tune/api/doc/ray.tune.search.optuna.OptunaSearch.html):
uniform -> tune.uniform (Optuna FloatDistribution), loguniform -> tune.loguniform (log=True),
randint [lo, hi) -> tune.randint (IntDistribution lo..hi-1), choice -> tune.choice
(CategoricalDistribution). `grid` has no Optuna counterpart: rejected when the sweep file loads.
The sweep's metric/mode are Optuna's objective and direction; the value told to Optuna is the
trial's recorded metric (its `trial.json`): failed trials are told FAIL, ASHA-stopped ones PRUNED.

Resume: a restarted sweep tells Optuna every finished trial (values and outcome) before it asks
for new ones, re-runs unfinished trials first with their own values in their own folder (their
checkpoints resume), and runs only `num_samples` minus the finished ones. With `concurrency: 1`
the proposals are reproducible from `seed`; with more, they depend on which trial ends first.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..config import config_from_dict, to_dict
from ..errors import UserError
from .ray_train import _absolute
from .sweep_spec import SweepSpec, Trial, trial_config

PARAMS = "trial_params.json"
INSTALL = ("search: optuna needs the optuna package, which is not installed: pip install optuna "
           "(or pip install 'scaletrain[optuna]')")


def check_installed() -> None:
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError(INSTALL) from None


def param_space(spec: SweepSpec) -> Dict[str, Any]:
    """The sweep's space as Ray Tune domains (OptunaSearch converts them to Optuna distributions)."""
    from ray import tune
    make = {"uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(*a), "choice": lambda a: tune.choice(a)}
    return {k: make[kind](arg) for k, v in spec.sweep.space.items() for kind, arg in to_dict(v).items()}


def _key(params: Dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def known_trials(spec: SweepSpec) -> List[Trial]:
    """Every trial an earlier or the current invocation claimed, from `trials/*/trial_params.json`."""
    root = os.path.join(spec.folder, "trials")
    out = []
    for tid in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, tid, PARAMS)
        if os.path.exists(path):
            with open(path) as f:
                params = json.load(f)["params"]
            out.append(Trial(tid, params, tid, 0, trial_config(spec, tid, params, "trial")))
    return out


def tune_ids(spec: SweepSpec) -> Dict[str, str]:
    """Ray Tune's trial id -> scaletrain's trial id (for trials that ended without a record)."""
    root, out = os.path.join(spec.folder, "trials"), {}
    for t in known_trials(spec):
        with open(os.path.join(root, t.id, PARAMS)) as f:
            out[json.load(f).get("tune_trial_id")] = t.id
    return out


def claim(folder: str, params: Dict[str, Any], unfinished: Dict[str, str], tune_trial_id: str) -> str:
    """The trial folder for these values: an unfinished trial's own (resume) or the next free one."""
    root = os.path.join(folder, "trials")
    os.makedirs(root, exist_ok=True)
    tid = unfinished.get(_key(params))
    if tid is None:
        n = 0
        while True:
            tid = f"t{n:03d}"
            try:
                os.mkdir(os.path.join(root, tid))   # atomic: two trials never get the same folder
                break
            except FileExistsError:
                n += 1
    with open(os.path.join(root, tid, PARAMS + ".tmp"), "w") as f:
        json.dump({"id": tid, "params": params, "tune_trial_id": tune_trial_id}, f)
    os.replace(os.path.join(root, tid, PARAMS + ".tmp"), os.path.join(root, tid, PARAMS))
    return tid


def run_optuna_trial(config: Dict[str, Any], spec: SweepSpec, unfinished: Dict[str, str],
                     run: Callable[[Dict[str, Any]], None]) -> None:
    """The Tune function of an Optuna trial: `config` holds the proposed values."""
    from ray import tune
    params = {k: config[k] for k in spec.sweep.space}
    tid = claim(spec.folder, params, unfinished, tune.get_context().get_trial_id())
    trial = Trial(tid, params, tid, 0, trial_config(spec, tid, params, "trial"))
    trial.cfg = to_dict(_absolute(config_from_dict(trial.cfg)))
    run(asdict(trial))


def history(spec: SweepSpec, records: Dict[str, Optional[Dict[str, Any]]], terminal) -> Tuple[list, dict]:
    """(finished trials to tell Optuna as (params, value, state), unfinished {values: trial id})."""
    told, unfinished = [], {}
    for t in known_trials(spec):
        rec = records.get(t.id)
        if rec and rec["status"] in terminal:
            v = (rec.get("metrics") or {}).get(spec.sweep.metric)
            told.append((t.params, v, rec["status"]))
        else:
            unfinished[_key(t.params)] = t.id
    return told, unfinished


def searcher(spec: SweepSpec, told: list, enqueued: List[Dict[str, Any]], read_record: Callable):
    """Ray Tune's OptunaSearch (TPE, seeded), told the finished trials of earlier invocations."""
    import optuna
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    s = spec.sweep

    def state_value(status: str, v) -> Tuple[Any, Optional[float]]:
        ok = status == "ok" and isinstance(v, (int, float)) and math.isfinite(v)
        if ok:
            return TrialState.COMPLETE, float(v)
        return (TrialState.PRUNED if status == "stopped" else TrialState.FAIL), None

    class SweepOptuna(OptunaSearch):
        def _setup_study(self, mode):
            super()._setup_study(mode)
            for params, v, status in told:
                state, value = state_value(status, v)
                self._ot_study.add_trial(optuna.trial.create_trial(
                    state=state, value=value, params=params, distributions=self._space))
            for params in enqueued:
                self._ot_study.enqueue_trial(params)

        def on_trial_result(self, trial_id: str, result: Dict):
            if self.metric in result and "training_iteration" in result:   # per-epoch reports lack
                super().on_trial_result(trial_id, result)                  # final metrics

        def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False):
            # the trial's own record says how it ended (Tune sees a failed trial return normally)
            tid = tune_ids(spec).get(trial_id)
            rec = read_record(spec.folder, tid) if tid else None
            if trial_id in self._completed_trials or trial_id not in self._ot_trials or rec is None:
                return super().on_trial_complete(trial_id, result, error)
            state, value = state_value(rec["status"], (rec.get("metrics") or {}).get(s.metric))
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
            self._completed_trials.add(trial_id)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return SweepOptuna(metric=s.metric, mode=s.mode, seed=int(s.seed))
