"""Rank and world helpers.

`init_distributed(cfg)` reads the usual torchrun / Ray Train environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), fills in sane
single-process defaults (a free localhost port) when they are absent, and
starts a process group: gloo on CPU, nccl on GPU (or `engine.dist_backend`).

On CPU, `DS_ACCELERATOR=cpu` must be set before DeepSpeed is imported
(GUIDE, "DeepSpeed on CPU"); `ensure_ds_accelerator()` does that.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from ..errors import ConfigError


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        barrier()

    def cleanup(self) -> None:
        cleanup()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_ds_accelerator(device: str = "auto") -> None:
    """Pin DeepSpeed's accelerator to CPU when no GPU is used (before `import deepspeed`)."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _device(cfg_device: str, local_rank: int) -> torch.device:
    if cfg_device == "cuda" or (cfg_device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("key 'engine.device': 'cuda' requested but no CUDA device is available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(cfg) -> DistInfo:
    """Start (or join) the process group described by the environment.

    `cfg` is the whole experiment config (uses `engine.device`, `engine.dist_backend`).
    Idempotent: a second call returns the existing group's info.
    """
    ecfg = cfg.engine
    ensure_ds_accelerator(ecfg.device)
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"] if os.environ["WORLD_SIZE"] == "1" else "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if os.environ["WORLD_SIZE"] != "1":
            raise ConfigError("WORLD_SIZE > 1 but MASTER_PORT is not set; start ranks with torchrun or "
                              "engine.launcher=ray")
        os.environ["MASTER_PORT"] = str(free_port())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = _device(ecfg.device, local_rank)
    if not tdist.is_initialized():
        backend = ecfg.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
        timeout = timedelta(minutes=float(os.environ.get("SCALETRAIN_DIST_TIMEOUT_MIN", 30)))
        for attempt in range(5):
            try:
                tdist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
                break
            except tdist.DistNetworkError:
                # port taken: a single process's store has no peers to agree on the port with, so it
                # takes another one. Seen in CI: a `scaletrain train` subprocess inherited the
                # MASTER_PORT of its parent (the test process), whose own group still held the port
                if world != 1 or attempt == 4:
                    raise
                os.environ["MASTER_PORT"] = str(free_port())
    else:
        rank, world = tdist.get_rank(), tdist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    return tdist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_rank0() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_initialized() and tdist.get_world_size() > 1:
        tdist.barrier()


def all_reduce_sum(values):
    """Sum of a list of floats over ranks (one collective, float64). Returns a list of floats."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if is_initialized() and tdist.get_world_size() > 1:
        if tdist.get_backend() == "nccl":
            t = t.cuda()
        tdist.all_reduce(t)
    return t.cpu().tolist()


def all_reduce_mean(values):
    """Mean of a list of floats over ranks."""
    return [v / get_world_size() for v in all_reduce_sum(values)]


def broadcast_object(obj, src: int = 0):
    if is_initialized() and tdist.get_world_size() > 1:
        box = [obj]
        tdist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def cleanup() -> None:
    """Destroy the process group (required before exit under ZeRO-3 on CPU, GUIDE pitfall)."""
    if is_initialized():
        try:
            barrier()
        finally:
            tdist.destroy_process_group()
            _forget_deepspeed_groups()


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches process groups at module level (e.g. `groups._WORLD_GROUP`); after
    the process group is destroyed those are stale, and a later engine in the same process
    (tests, sweeps, `train` called twice) fails with "Group ... is not registered"."""
    import sys
    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return
    for name in list(vars(groups)):
        if name.startswith("_") and (name.endswith("_GROUP") or name.endswith("_GROUP_RANKS")):
            value = getattr(groups, name)
            setattr(groups, name, {} if isinstance(value, dict) else None)
