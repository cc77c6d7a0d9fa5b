"""Elastic resume: a ZeRO 1-3 checkpoint written by N ranks resumes on M ranks (or another stage).

DeepSpeed's own files (`engine/`) hold each rank's flat fp32 partition and optimizer state in
the layout of N ranks; they load only at the same world size and stage. Next to them every
rank writes `elastic/rankRRRRR.pt`: its optimizer state cut along parameter boundaries, keyed
by (parameter name, element range), through `Engine.param_slices()` (the same map that keys
counter-based noise). With the consolidated fp32 weights (`model.pt`) this is a layout-free
copy of the training state -- the same idea as DeepSpeed's universal checkpoint
(https://www.deepspeed.ai/tutorials/universal-checkpointing/), written at save time so no
offline conversion step is needed.

Loading at a different layout (`load_elastic`), every rank
  1. sets its module weights (ZeRO 0-2: the full params; ZeRO-3: its `ds_tensor` partition)
     and its fp32 master partition from `model.pt`,
  2. assembles, per parameter, the optimizer state tensors (Adam's exp_avg / exp_avg_sq) from
     all old ranks' files and copies its new element ranges into the state of its new flat
     partition; 0-dim state (Adam's step) is copied as is,
  3. takes the RNG state, loader position and buffers of old rank r if r < N; a new rank r >= N
     gets rank 0's buffers and loader position and a fresh RNG stream seeded by (seed, step, r),
  4. rescales the position: micro-batches consumed in the epoch per rank = old x N / M, and
     micro_step = step x (new accumulation) (checkpoints are taken at accumulation boundaries).
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from .checkpoint import load_buffers, rng_state

FOLDER = "elastic"


def rank_file(rank: int) -> str:
    return os.path.join(FOLDER, f"rank{rank:05d}.pt")


def _state_of(engine, flat: torch.Tensor) -> Dict[str, Any]:
    return engine.optimizer.state.get(flat, {})


def save_slices(engine, ckpt_dir: str) -> str:
    """This rank's optimizer state by (parameter, element range) -> `<ckpt_dir>/elastic/rankR.pt`."""
    entries: List[Dict[str, Any]] = []
    for s in engine.param_slices():
        state = _state_of(engine, s.tensor)
        out = {}
        for key, v in state.items():
            if torch.is_tensor(v) and v.dim() > 0 and v.numel() == s.tensor.numel():
                out[key] = v.detach().reshape(-1)[s.offset:s.offset + s.numel].float().cpu().clone()
            elif torch.is_tensor(v):
                out[key] = v.detach().cpu().clone()
            elif isinstance(v, (int, float, bool)):
                out[key] = v
        entries.append({"name": s.name, "param_offset": s.param_offset, "numel": s.numel, "state": out})
    rel = rank_file(engine.rank)
    os.makedirs(os.path.join(ckpt_dir, FOLDER), exist_ok=True)
    torch.save({"entries": entries, "world_size": engine.world_size}, os.path.join(ckpt_dir, rel))
    return rel


def _full_states(path: str, old_world: int, numels: Dict[str, int]) -> Tuple[Dict[str, Dict[str, torch.Tensor]],
                                                                             Dict[str, Dict[str, Any]]]:
    """Per parameter: full-size element-wise state tensors, and the 0-dim/scalar state."""
    full: Dict[str, Dict[str, torch.Tensor]] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for r in range(old_world):
        data = torch.load(os.path.join(path, rank_file(r)), map_location="cpu", weights_only=True)
        for e in data["entries"]:
            name, a, n = e["name"], int(e["param_offset"]), int(e["numel"])
            for key, v in e["state"].items():
                if torch.is_tensor(v) and v.dim() > 0:
                    t = full.setdefault(name, {}).setdefault(key, torch.zeros(numels[name]))
                    t[a:a + n] = v
                else:
                    scalars.setdefault(name, {})[key] = v
    return full, scalars


def _set_module_weights(engine, model_sd: Dict[str, torch.Tensor]) -> None:
    module = engine.module
    with torch.no_grad():
        if engine.zero_stage == 3:
            rank = engine.rank
            for name, p in module.named_parameters():
                part = p.ds_tensor.ds_numel
                start = rank * part
                valid = max(0, min(part, p.ds_numel - start))
                if valid:
                    p.ds_tensor.data.view(-1)[:valid].copy_(model_sd[name].reshape(-1)[start:start + valid])
            load_buffers(module, {k: v for k, v in model_sd.items() if k not in dict(module.named_parameters())})
        else:
            module.load_state_dict(model_sd)


def load_elastic(engine, path: str, meta: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Restore a checkpoint of another world size / ZeRO stage; returns (meta, rank state) with
    the position rescaled to this world size (see the module docstring)."""
    old_world, new_world = int(meta["world_size"]), engine.world_size
    model_sd = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    _set_module_weights(engine, model_sd)
    slices = engine.param_slices()
    numels = {name: t.numel() for name, t in model_sd.items()}
    full, scalars = _full_states(path, old_world, numels)
    opt = engine.optimizer
    with torch.no_grad():
        for s in slices:  # fp32 masters (ZeRO partitions or the params themselves)
            s.tensor.view(-1)[s.offset:s.offset + s.numel].copy_(
                model_sd[s.name].reshape(-1)[s.param_offset:s.param_offset + s.numel])
        fresh = set()
        for s in slices:
            if s.name not in full and s.name not in scalars:
                continue
            state = opt.state[s.tensor]
            if id(s.tensor) not in fresh:
                state.clear()
                fresh.add(id(s.tensor))
            for key, v in scalars.get(s.name, {}).items():
                state[key] = v.clone() if torch.is_tensor(v) else v
            for key, t in full.get(s.name, {}).items():
                if key not in state or not torch.is_tensor(state[key]) or state[key].dim() == 0:
                    state[key] = torch.zeros_like(s.tensor)
                state[key].view(-1)[s.offset:s.offset + s.numel].copy_(
                    t[s.param_offset:s.param_offset + s.numel])
    r = engine.rank if engine.rank < old_world else 0
    rank_state = torch.load(os.path.join(path, f"rank{r:05d}.pt"), map_location="cpu", weights_only=True)
    if engine.rank >= old_world:  # no old counterpart: own stream, same for every resume
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((int(meta.get("seed", 0)) * 1000003 + int(meta["step"]) * 1009 + engine.rank)
                              % (2 ** 63))
            np_state, py_state = np.random.get_state(), random.getstate()
            np.random.seed(int(torch.randint(2 ** 31, (1,))))
            random.seed(int(torch.randint(2 ** 31, (1,))))
            rank_state["rng"] = rng_state()
            np.random.set_state(np_state)
            random.setstate(py_state)
    ga = int(engine.grad_accum)
    meta = dict(meta, micro_step=int(meta["step"]) * ga,
                batch=int(meta["batch"]) * old_world // new_world, elastic_from=old_world)
    return meta, rank_state
