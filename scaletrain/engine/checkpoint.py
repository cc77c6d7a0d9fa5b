"""Atomic, resumable checkpoints.

Layout of one checkpoint (`<run_dir>/checkpoints/step_000000120/`)::

    meta.json        step, micro step, stage, epoch, batch in epoch, best metrics, world size ...
                     (written last: a folder without a complete meta.json is never used)
    config.yaml      the resolved config of the run
    model.pt         consolidated fp32 state_dict (any ZeRO stage), plain tensors
    rank00000.pt     per-rank RNG states (torch, CUDA, numpy, python), data-stream position and
                     module buffers (BatchNorm statistics differ per rank)
    engine/          optimizer/partition state: DeepSpeed's files, or engine.pt (torch backend)

Every rank writes into `.tmp-step_.../`; after a barrier rank 0 writes
`meta.json`, fsyncs and renames the folder into place, then prunes to the last
`train.keep_last`. A crash at any point leaves the previous checkpoints intact.
Everything is read back with `torch.load(weights_only=True)` or as JSON/YAML.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..errors import UserError
from . import dist as D

_NAME = re.compile(r"^step_(\d+)$")
META = "meta.json"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def rng_state() -> Dict[str, Any]:
    """Every global RNG as tensors and plain numbers (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def module_buffers(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """This rank's buffers (BatchNorm running statistics: each rank's differ)."""
    return {k: b.detach().cpu().clone() for k, b in module.named_buffers()}


def load_buffers(module: torch.nn.Module, buffers: Optional[Dict[str, torch.Tensor]]) -> None:
    if not buffers:
        return
    with torch.no_grad():
        for k, b in module.named_buffers():
            if k in buffers:
                b.copy_(buffers[k].to(b.device))


def read_meta(path: str) -> Optional[dict]:
    """The checkpoint's meta.json if the checkpoint is complete, else None."""
    try:
        with open(os.path.join(path, META)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not meta.get("complete"):
        return None
    if not all(os.path.exists(os.path.join(path, f)) for f in meta.get("files", [])):
        return None
    return meta


def list_checkpoints(root: str) -> List[str]:
    """Complete checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _NAME.match(name)
        if m and read_meta(os.path.join(root, name)) is not None:
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str, at_most_step: Optional[int] = None) -> Optional[str]:
    """The newest complete checkpoint, or the newest of global step <= `at_most_step`."""
    ckpts = list_checkpoints(root)
    if at_most_step is not None:
        ckpts = [p for p in ckpts if int(_NAME.match(os.path.basename(p)).group(1)) <= at_most_step]
    return ckpts[-1] if ckpts else None


def resolve_resume(resume: str, run_dir: str) -> Optional[str]:
    """`resume` = never | auto | <checkpoint folder, checkpoints folder or run folder>."""
    if resume in (None, "", "never"):
        return None
    if resume == "auto":
        return latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    path = os.path.expanduser(resume)
    if read_meta(path) is not None:
        return path
    for root in (os.path.join(path, "checkpoints"), path):
        found = latest_checkpoint(root)
        if found:
            return found
    raise UserError(f"key 'resume': no complete checkpoint found at {resume}")


class CheckpointManager:
    def __init__(self, root: str, keep_last: int = 2):
        self.root, self.keep_last = root, int(keep_last)

    def save(self, engine, meta: Dict[str, Any], rank_state: Dict[str, Any],
             config_yaml: Optional[str] = None) -> str:
        """Write a checkpoint collectively (every rank calls). Returns its final path."""
        name = f"step_{int(meta['step']):09d}"
        final, tmp = os.path.join(self.root, name), os.path.join(self.root, f".tmp-{name}")
        if D.is_rank0():
            os.makedirs(self.root, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        D.barrier()
        engine.save_state(os.path.join(tmp, "engine"))
        if engine.zero_stage > 0:  # layout-free optimizer state: resume at another world size
            from .elastic import save_slices
            save_slices(engine, tmp)
        rank_file = f"rank{engine.rank:05d}.pt"
        torch.save(rank_state, os.path.join(tmp, rank_file))
        model_sd = engine.consolidated_state_dict()  # collective under ZeRO
        if D.is_rank0():
            torch.save(model_sd, os.path.join(tmp, "model.pt"))
            if config_yaml is not None:
                with open(os.path.join(tmp, "config.yaml"), "w") as f:
                    f.write(config_yaml)
        D.barrier()
        if D.is_rank0():
            files = ["model.pt"] + [f"rank{r:05d}.pt" for r in range(engine.world_size)]
            if engine.zero_stage > 0:
                from .elastic import rank_file as elastic_file
                files += [elastic_file(r) for r in range(engine.world_size)]
            meta = dict(meta, complete=True, files=files, world_size=engine.world_size,
                        backend=engine.backend, zero_stage=engine.zero_stage, time=time.time())
            with open(os.path.join(tmp, META), "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            if os.path.exists(final):  # e.g. the same step written again after a rollback
                old = os.path.join(self.root, f".old-{name}-{time.time_ns()}")
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
        D.barrier()
        return final

    def _prune(self) -> None:
        for name in os.listdir(self.root):  # leftovers of crashed writes
            if name.startswith((".tmp-", ".old-")):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        if self.keep_last > 0:
            for path in list_checkpoints(self.root)[:-self.keep_last]:
                shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def load(engine, path: str):
        """Restore engine state; return (meta, this rank's state dict)."""
        meta = read_meta(path)
        if meta is None:
            raise UserError(f"key 'resume': {path} is not a complete checkpoint")
        if meta["backend"] != engine.backend:
            raise UserError(f"key 'resume': checkpoint {path} is from engine.backend={meta['backend']}, "
                            f"this run uses {engine.backend}")
        if meta["zero_stage"] > 0 and (meta["world_size"] != engine.world_size
                                       or meta["zero_stage"] != engine.zero_stage):
            from .elastic import FOLDER, load_elastic
            if not os.path.isdir(os.path.join(path, FOLDER)):
                raise UserError(f"key 'resume': checkpoint {path} was written by {meta['world_size']} ranks "
                                f"with ZeRO-{meta['zero_stage']} and has no elastic/ state; resume with the "
                                f"same number of workers and stage (or start from its model.pt)")
            return load_elastic(engine, path, meta)
        engine.load_state(os.path.join(path, "engine"))
        rank_file = os.path.join(path, f"rank{engine.rank:05d}.pt")
        if not os.path.exists(rank_file):
            rank_file = os.path.join(path, "rank00000.pt")
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
        return meta, rank_state
