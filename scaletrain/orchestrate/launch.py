"""`scaletrain launch --address http://HOST:8265 [CONFIG] [key=value ...]`: submit a run to a Ray cluster.

Uses the Ray Jobs API (https://docs.ray.io/en/latest/cluster/running-applications/job-submission/sdk.html):
`JobSubmissionClient.submit_job(entrypoint=..., runtime_env=...)`, then follows the job's logs
with `tail_job_logs` and exits with the job's status (0 succeeded, 1 failed or stopped).

The job runs `scaletrain train CONFIG overrides engine.launcher=ray` on the head node, so the
run's workers are Ray Train workers spread over the cluster. The runtime environment uploads
the working directory (the repo: code and configs; bulky local folders excluded) and forwards
`WANDB_*` and `SCALETRAIN_*` variables plus any `--env KEY=VALUE` (e.g. `DS_ACCELERATOR=cpu`
for a CPU cluster; GPU nodes pick CUDA by themselves).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

from ..errors import UserError

EXCLUDES = [".git", ".venv", "runs", "sweeps", "data", "wandb", "bench/out", "*.tar", "__pycache__", ".pytest_cache",
            "*.egg-info", ".ray"]
FORWARD_PREFIXES = ("WANDB_", "SCALETRAIN_")


def build_entrypoint(python: str, config: Optional[str], overrides: Sequence[str]) -> str:
    args = [python, "-m", "scaletrain.cli", "train"]
    if config:
        args.append(config)
    overrides = list(overrides)
    if not any(o.startswith("engine.launcher=") for o in overrides):
        overrides.append("engine.launcher=ray")
    return " ".join(shlex.quote(a) for a in args + overrides)


def build_runtime_env(working_dir: str, env: Dict[str, str], pip: List[str]) -> Dict:
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_PREFIXES)}
    env_vars.update(env)
    rt: Dict = {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars}
    if pip:
        rt["pip"] = pip
    return rt


def _parse_env(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise UserError(f"--env '{it}' is not of the form KEY=VALUE")
        k, v = it.split("=", 1)
        out[k] = v
    return out


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def launch_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="scaletrain launch",
                                description="Submit `scaletrain train` to a Ray cluster (Ray Jobs API), stream its "
                                            "logs and exit with its status.")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
                   help="Ray dashboard address, e.g. http://HOST:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--working-dir", default=".", help="folder uploaded as the job's working dir (default: .)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment variable")
    p.add_argument("--pip", action="append", default=[], help="extra pip requirement installed for the job")
    p.add_argument("--python", default="python", help="python executable on the cluster (default: python)")
    p.add_argument("--submission-id", default=None)
    p.add_argument("--entrypoint-num-cpus", type=float, default=None)
    p.add_argument("--no-wait", action="store_true", help="submit and return without following the logs")
    p.add_argument("args", nargs="*", help="[CONFIG.yaml] [key=value ...]")
    ns = p.parse_args(list(argv))
    if not ns.address:
        raise UserError("scaletrain launch needs --address http://HOST:8265 (or RAY_ADDRESS)")
    config = None
    overrides = list(ns.args)
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
        if not os.path.exists(config):
            raise UserError(f"config file not found: {config}")
        wd = os.path.abspath(ns.working_dir)
        if not os.path.abspath(config).startswith(wd + os.sep):
            raise UserError(f"config {config} must be inside the uploaded working dir {wd}")
        config = os.path.relpath(os.path.abspath(config), wd)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"unexpected argument '{bad[0]}': overrides look like key=value")
    if not os.path.isdir(ns.working_dir):
        raise UserError(f"--working-dir {ns.working_dir} is not a folder")

    from ray.job_submission import JobStatus, JobSubmissionClient
    try:
        client = JobSubmissionClient(ns.address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot reach the Ray cluster at {ns.address}: {str(e).splitlines()[0]}") from None
    entrypoint = build_entrypoint(ns.python, config, overrides)
    job_id = client.submit_job(entrypoint=entrypoint,
                               runtime_env=build_runtime_env(ns.working_dir, _parse_env(ns.env), ns.pip),
                               submission_id=ns.submission_id, entrypoint_num_cpus=ns.entrypoint_num_cpus,
                               metadata={"tool": "scaletrain"})
    print(f"submitted {job_id} to {ns.address}: {entrypoint}", flush=True)
    if ns.no_wait:
        return 0
    try:
        asyncio.run(_follow(client, job_id))
    except KeyboardInterrupt:
        client.stop_job(job_id)
        print(f"\nstopped {job_id}", file=sys.stderr)
        return 130
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    print(f"job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
