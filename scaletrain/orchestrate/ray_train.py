"""`engine.launcher=ray`: one run as a Ray Train (V2) `TorchTrainer` with `engine.workers` workers.

    report = run_with_ray(cfg)

Each Ray worker runs `scaletrain.run.train_worker(cfg, run_dir=...)` (the same function a
local or torchrun rank runs); Ray sets up the torch process group (gloo on CPU, nccl on GPU)
and `init_distributed` joins it. Ray reporting stays outside the training loop: a trainer
hook (`RayReportHook`) reports metrics at every epoch end and every checkpoint with
`ray.train.report(metrics, checkpoint=Checkpoint.from_directory(...))`.

Fault tolerance (`engine.max_failures`): Ray restarts the worker group after a worker dies
(`FailureConfig(max_failures=...)`); the new workers get the last reported checkpoint from
`ray.train.get_checkpoint()` and resume from it mid-stage, mid-epoch.

Cluster: `engine.ray_address` or `RAY_ADDRESS` connects to an existing cluster; otherwise a
local Ray is started with enough *logical* CPUs for the workers (GUIDE: logical CPUs may
exceed cores). Placement: `engine.placement` (PACK, SPREAD, STRICT_SPREAD = one worker per
node) and `engine.worker_resources` (custom node resources, e.g. `{node_b: 1}`).

Shared storage rule: on several nodes `out_dir` must be a filesystem every node sees (all
ranks write one run folder and checkpoint); `engine.ray_storage` (NFS path or s3://...) is
where Ray keeps its copy. The driver writes a token file into `out_dir` and every worker
checks it can read it before training; a worker on a node that cannot (a node-local
`out_dir`) stops the run with a UserError naming the node (docs/launch.md).

This module wraps any per-rank worker `worker(cfg, run_dir=...)`; it does not import
`run.py` (`scaletrain.orchestrate.train` passes `scaletrain.run.train_worker`).

Ray docs: https://docs.ray.io/en/latest/train/getting-started-pytorch.html ,
https://docs.ray.io/en/latest/train/user-guides/checkpoints.html ,
https://docs.ray.io/en/latest/train/user-guides/fault-tolerance.html
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import socket
import tempfile
import uuid
from typing import Any, Callable, Dict, List, Optional, Union

from omegaconf import DictConfig

from ..engine.preempt import LATCH, clear_stop, request_stop
from ..errors import Preempted

DEFAULT_WORKER = "scaletrain.run:train_worker"


def _scalars(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


class RayReportHook:
    """Trainer hook: report to Ray Train from inside a worker (all ranks call it)."""

    def on_epoch_end(self, trainer, metrics):
        import ray.train
        done = sum(s.epochs for s in trainer.stages[:metrics.get("stage", 0)]) + metrics.get("epoch", 0) + 1
        ray.train.report(dict(_scalars(metrics), epochs_done=done))   # epochs_done: ASHA's time axis

    def on_checkpoint(self, trainer, path, metrics):
        import ray.train
        # Rank 0 reports the folder, which holds every rank's files (shared run folder);
        # Ray merges workers' checkpoints into one directory and needs all ranks to call report.
        ckpt = ray.train.Checkpoint.from_directory(path) if trainer.engine.rank == 0 else None
        ray.train.report(_scalars(dict(metrics, checkpoint_step=trainer.engine.global_step)), checkpoint=ckpt,
                         checkpoint_dir_name=os.path.basename(path))


def _load_worker(spec: Union[str, Callable]) -> Callable:
    if callable(spec):
        return spec
    mod, _, fn = spec.partition(":")
    return getattr(importlib.import_module(mod), fn)


def _newest(ray_path: Optional[str], run_dir: str) -> Optional[str]:
    """The newer of Ray's last registered checkpoint and the run folder's last complete one.

    Ray registers a checkpoint only once its controller has polled every worker's report
    (every ~2 s), so a worker dying right after a checkpoint can leave Ray one or two
    checkpoints behind the (atomic, shared) run folder."""
    from ..engine.checkpoint import latest_checkpoint, read_meta
    found = [p for p in (ray_path, latest_checkpoint(os.path.join(run_dir, "checkpoints"))) if p]
    found = [(read_meta(p)["step"], i, p) for i, p in enumerate(found) if read_meta(p) is not None]
    return max(found)[2] if found else None


STORAGE_TOKEN = ".scaletrain-storage-{}"
USER_ERROR = re.compile(r"^\s*(?:[\w.]+\.)?(?:UserError|ConfigError|DataError): (.+)$")


def write_storage_token(out_dir: str) -> str:
    """The driver's half of the shared-storage check: a fresh token file in `out_dir`."""
    token = uuid.uuid4().hex
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, STORAGE_TOKEN.format(token))
    with open(path, "w") as f:
        f.write(socket.gethostname())
    return token


def check_shared_storage(out_dir: str, token: Optional[str], where: str) -> None:
    """A worker's half: the driver's token must be visible here, else `out_dir` is node-local."""
    from ..errors import UserError
    if token and not os.path.exists(os.path.join(out_dir, STORAGE_TOKEN.format(token))):
        raise UserError(f"key 'out_dir': {out_dir} is not shared: the driver's files are not visible on node "
                        f"{where}; a multi-node run needs out_dir (and engine.ray_storage) on a filesystem every "
                        f"node sees (NFS, a cluster filesystem; docs/launch.md)")


def _record_node(run_dir: str, rank: int) -> None:
    """run_dir/ray_nodes/rank<r>-<pid>.json: where each rank (and each restart) ran."""
    import ray
    folder = os.path.join(run_dir, "ray_nodes")
    os.makedirs(folder, exist_ok=True)
    info = {"rank": rank, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname()}
    with open(os.path.join(folder, f"rank{rank}-{os.getpid()}.json"), "w") as f:
        json.dump(info, f)


def ray_worker_loop(config: Dict[str, Any]) -> None:
    """Ray Train `train_loop_per_worker`: resume from Ray's checkpoint if any, run the worker."""
    import ray
    import ray.train

    from ..config import config_from_dict
    from ..engine.hooks import use_hooks
    ctx = ray.train.get_context()
    node = ray.get_runtime_context().get_node_id()
    check_shared_storage(os.path.dirname(config["run_dir"]), config.get("storage_token"),
                         f"{socket.gethostname()} (Ray node {node[:12]})")
    _record_node(config["run_dir"], ctx.get_world_rank())
    os.environ.update(RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()),
                      LOCAL_RANK=str(ctx.get_local_rank()))
    if not config.get("use_gpu"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for k, v in config.get("env", {}).items():
        os.environ.setdefault(k, v)
    worker = _load_worker(config["worker"])
    cfg = config_from_dict(config["cfg"])
    checkpoint = ray.train.get_checkpoint()
    with contextlib.ExitStack() as stack:
        ray_path = str(stack.enter_context(checkpoint.as_directory())) if checkpoint is not None else None
        resume = _newest(ray_path, config["run_dir"])
        if resume is not None:
            cfg.resume = resume
        with use_hooks(RayReportHook(), *config.get("hooks", ())):
            try:
                report = worker(cfg, run_dir=config["run_dir"])
            except Preempted as stop:  # a clean stop, not a failure: Ray must not restart it
                report = {"interrupted": {"reason": stop.reason, "step": stop.step,
                                          "checkpoint": stop.checkpoint}}
    if isinstance(report, dict):
        report["resume_source"] = {"ray_checkpoint": ray_path, "used": resume}
    # Ray V2 keeps the metrics that come with a checkpoint: rank 0 attaches a tiny one holding
    # the report, so the driver receives it without a shared filesystem.
    final, ckpt = {"final": 1}, None
    with tempfile.TemporaryDirectory() as tmp:
        if ctx.get_world_rank() == 0:
            final["report_json"] = json.dumps(report or {}, default=str)
            with open(os.path.join(tmp, "report.json"), "w") as f:
                f.write(final["report_json"])
            ckpt = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(final, checkpoint=ckpt, checkpoint_dir_name="final_report")


def _absolute(cfg: DictConfig) -> DictConfig:
    """Ray workers may run in another folder: make local paths absolute."""
    cfg = cfg.copy()
    cfg.out_dir = os.path.abspath(cfg.out_dir)
    for key in ("root", "path", "train_urls", "test_urls"):
        val = cfg.data.get(key)
        if val and "://" not in val and not val.startswith("pipe:") and not os.path.isabs(val):
            cfg.data[key] = os.path.abspath(val)
    return cfg


def connect(cfg) -> None:
    """Join `engine.ray_address` / `RAY_ADDRESS`, else start a local Ray sized for the run."""
    import ray
    if ray.is_initialized():
        return
    address = cfg.engine.ray_address or os.environ.get("RAY_ADDRESS")
    env = {"DS_ACCELERATOR": os.environ["DS_ACCELERATOR"]} if "DS_ACCELERATOR" in os.environ else {}
    if address:
        # no runtime_env here: inside a Ray job it would conflict with the job's own; the
        # variables workers need travel in the train loop config (ray_worker_loop sets them)
        ray.init(address=address, log_to_driver=True)
        return
    need = int(math.ceil(cfg.engine.workers * cfg.engine.cpus_per_worker)) + 1
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
             runtime_env={"env_vars": env} if env else None)


def run_with_ray(cfg: DictConfig, worker: Union[str, Callable] = DEFAULT_WORKER,
                 run_dir: Optional[str] = None, callbacks: Optional[List[Any]] = None,
                 hooks: Optional[List[Any]] = None) -> Dict[str, Any]:
    """Run `worker(cfg, run_dir=...)` on `engine.workers` Ray Train workers; return rank 0's report.

    `callbacks`: Ray Train V2 `UserCallback`s, e.g. Tune's `TuneReportCallback` when the run is
    a sweep trial (the Tune function builds and fits this TorchTrainer). `hooks`: trainer hooks
    (engine/hooks.py; picklable objects) installed in every worker, e.g. a sweep's loss guard:
    hooks installed with `use_hooks` in the calling process do not reach the workers."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..config import to_dict
    from ..errors import UserError
    cfg = _absolute(cfg)
    from ..runs import resolve_run_dir
    if run_dir is None:
        run_dir = str(resolve_run_dir(cfg))
    run_dir = os.path.abspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    token = write_storage_token(os.path.dirname(run_dir))
    e = cfg.engine
    use_gpu = e.gpus_per_worker > 0
    connect(cfg)
    resources = {"CPU": e.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = e.gpus_per_worker
    resources.update({k: float(v) for k, v in e.worker_resources.items()})
    env = {k: v for k, v in os.environ.items() if k.startswith(("WANDB_", "DS_ACCELERATOR", "SCALETRAIN_"))}
    trainer = TorchTrainer(
        ray_worker_loop,
        train_loop_config={"cfg": to_dict(cfg), "run_dir": run_dir, "worker": worker, "use_gpu": use_gpu,
                           "env": env, "storage_token": token, "hooks": list(hooks or [])},
        torch_config=TorchConfig(backend=e.dist_backend or ("nccl" if use_gpu else "gloo")),
        scaling_config=ray.train.ScalingConfig(num_workers=e.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources, placement_strategy=e.placement),
        run_config=ray.train.RunConfig(
            name=os.path.basename(run_dir),
            storage_path=e.ray_storage or os.path.join(run_dir, "ray"),
            failure_config=ray.train.FailureConfig(max_failures=e.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_last or None),
            callbacks=list(callbacks or []),
        ),
    )
    # Ray Train runs the training function in a thread, where no signal handler can be
    # installed: the driver takes SIGTERM / SIGUSR1 and asks the workers to stop through the
    # run folder's stop file (engine/preempt.py); Ray's own SIGINT handler (abort) stays.
    clear_stop(run_dir)  # a stop request of an earlier launch; workers never clear it
    LATCH.install(cfg.train.preempt_grace_s, on_trigger=lambda reason: request_stop(run_dir, reason))
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        _remove_token(run_dir, token)
        # a user mistake inside a worker stays a user mistake: the worker's own exception line
        # (`scaletrain.errors.UserError: ...`), not a traceback's source line that mentions it
        found = [m.group(1) for m in map(USER_ERROR.match, str(err).splitlines()) if m]
        if found:
            raise UserError(found[-1].strip()) from None
        raise
    finally:
        LATCH.uninstall()
    _remove_token(run_dir, token)
    metrics = result.metrics or {}
    report = json.loads(metrics.get("report_json", "{}"))
    if isinstance(report, dict) and "interrupted" in report:
        i = report["interrupted"]
        raise Preempted(i["reason"], i["step"], i["checkpoint"])
    if isinstance(report, dict) and isinstance(report.setdefault("ray", {}), dict):
        report["ray"].update(storage=result.path)
    return report


def _remove_token(run_dir: str, token: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(os.path.join(os.path.dirname(run_dir), STORAGE_TOKEN.format(token)))


__all__ = ["run_with_ray", "check_shared_storage", "write_storage_token", "ray_worker_loop", "RayReportHook", "connect"]
