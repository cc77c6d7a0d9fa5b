"""`scaletrain export RUN_DIR`: a consolidated fp32 `state_dict` plus its config.

Every checkpoint already holds `model.pt`, the full fp32 weights gathered from the ZeRO
partitions when it was written (`Engine.consolidated_state_dict`), so exporting never needs
DeepSpeed, the original world size, or unpickling: it reads with `weights_only=True`, checks
that the weights load strictly into the model class named by the run's config, and writes

    <out>/model.pt      plain state_dict, float tensors in fp32
    <out>/config.yaml   the run's resolved config
    <out>/export.json   source file, sha256, parameter count
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from typing import Optional, Sequence

import torch

from ..errors import UserError
from .checkpoint import latest_checkpoint, read_meta


def _source(run_dir: str, which: str):
    """(model.pt path, config.yaml path) for `which` = final | latest | a checkpoint folder."""
    if read_meta(run_dir) is not None:  # RUN_DIR is itself a checkpoint
        return os.path.join(run_dir, "model.pt"), os.path.join(run_dir, "config.yaml")
    if not os.path.isdir(run_dir):
        raise UserError(f"no such run folder: {run_dir}")
    run_cfg = os.path.join(run_dir, "config.yaml")
    ckpt = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if which == "final" or (which == "auto" and os.path.exists(os.path.join(run_dir, "model.pt"))):
        model = os.path.join(run_dir, "model.pt")
        if not os.path.exists(model):
            raise UserError(f"{run_dir}: no final model.pt (use --from latest for the newest checkpoint)")
        cfg = run_cfg if os.path.exists(run_cfg) else (os.path.join(ckpt, "config.yaml") if ckpt else run_cfg)
        return model, cfg
    if ckpt is None:
        raise UserError(f"{run_dir}: neither a final model.pt nor a complete checkpoint")
    cfg = os.path.join(ckpt, "config.yaml")
    return os.path.join(ckpt, "model.pt"), cfg if os.path.exists(cfg) else run_cfg


def export_run(run_dir: str, out: Optional[str] = None, which: str = "auto") -> str:
    """Export a run (or one checkpoint folder). Returns the path of the written model.pt."""
    model_path, cfg_path = _source(run_dir, which)
    if not os.path.exists(cfg_path):
        raise UserError(f"{run_dir}: config.yaml not found (needed to rebuild the model class)")
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{model_path}: not a weights-only state_dict ({type(e).__name__}: {e})") from None
    state = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    from ..config import load_config
    from ..models import create_model
    cfg = load_config(cfg_path)
    model = create_model(cfg.model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"{model_path} does not fit model '{cfg.model.name}': {str(e).splitlines()[0]}") from None
    out = out or os.path.join(run_dir, "export")
    os.makedirs(out, exist_ok=True)
    dst = os.path.join(out, "model.pt")
    torch.save(state, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    if os.path.abspath(cfg_path) != os.path.abspath(os.path.join(out, "config.yaml")):
        shutil.copyfile(cfg_path, os.path.join(out, "config.yaml"))
    with open(dst, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    info = {"source": os.path.abspath(model_path), "sha256": sha, "model": cfg.model.name,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32"}
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump(info, f, indent=1)
    return dst


def export_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="scaletrain export",
                                description="Write a run's weights as a plain fp32 state_dict (any ZeRO stage) "
                                            "plus its config; load with torch.load(..., weights_only=True).")
    p.add_argument("run_dir", help="run folder (runs/<name>) or one checkpoint folder")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export)")
    p.add_argument("--from", dest="which", choices=("auto", "final", "latest"), default="auto",
                   help="final model.pt, the newest checkpoint, or auto (final if present)")
    ns = p.parse_args(list(argv))
    dst = export_run(ns.run_dir, ns.out, ns.which)
    print(f"exported {dst}")
    return 0
