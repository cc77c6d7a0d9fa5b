"""The engine: distributed helpers, DeepSpeed / PyTorch engine, trainer, checkpoints.

    dist = init_distributed(cfg)
    engine = build_engine(cfg, model, dist)
    result = Trainer(cfg, engine, method, data, tracker, run_dir=...).fit()
    cleanup()
"""
from .checkpoint import CheckpointManager, latest_checkpoint, list_checkpoints, resolve_resume
from .dist import DistInfo, barrier, cleanup, init_distributed, is_rank0
from .engine import Engine, build_engine, deepspeed_config, grad_accum_steps
from .hooks import use_hooks
from .optim import LRSchedule, create_optimizer, register_optimizer
from .trainer import Stage, StepContext, Trainer, plan_stages

__all__ = [
    "init_distributed", "DistInfo", "barrier", "is_rank0", "cleanup", "build_engine", "Engine",
    "deepspeed_config", "grad_accum_steps", "Trainer", "StepContext", "Stage", "plan_stages",
    "CheckpointManager", "latest_checkpoint", "list_checkpoints", "resolve_resume", "use_hooks",
    "LRSchedule", "create_optimizer", "register_optimizer",
]
