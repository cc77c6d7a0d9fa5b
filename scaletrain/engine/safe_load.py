"""Checkpoint loading that never unpickles arbitrary objects.

DeepSpeed's `TorchCheckpointEngine.load` calls `torch.load(..., weights_only=False)`.
We replace the engine's checkpoint engine (a documented plug-in point:
`deepspeed.runtime.checkpoint_engine`) with one that loads with
`weights_only=True` and an explicit allowlist of the few plain DeepSpeed
classes its state dicts contain. The weights-only unpickler rebuilds an
allowlisted class from its fields only; it never calls arbitrary callables, so
a tampered checkpoint fails to load instead of running code.
"""
from __future__ import annotations

import torch


def _allowlist():
    names = [
        ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
        ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
        ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
        ("deepspeed.utils.tensor_fragment", "fragment_address"),
        ("deepspeed.checkpoint.constants", "PARAM_SLICE_MAPPINGS"),
    ]
    out = []
    import importlib
    for mod, name in names:
        try:
            obj = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(obj, type):
            out.append(obj)
    return out


def safe_torch_load(path, map_location=None):
    with torch.serialization.safe_globals(_allowlist()):
        return torch.load(path, map_location=map_location, weights_only=True)


def install_safe_checkpoint_engine(ds_engine) -> None:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            return safe_torch_load(path, map_location=map_location)

    current = ds_engine.checkpoint_engine
    if isinstance(current, TorchCheckpointEngine) and type(current).__name__ != "SafeTorchCheckpointEngine":
        safe = SafeTorchCheckpointEngine.__new__(SafeTorchCheckpointEngine)
        safe.__dict__.update(current.__dict__)
        ds_engine.checkpoint_engine = safe
    elif not isinstance(current, TorchCheckpointEngine):
        raise RuntimeError(f"unsupported DeepSpeed checkpoint engine {type(current).__name__}: "
                           "scaletrain only loads checkpoints with weights_only=True")
