"""Export round trip: ZeRO-3 training -> checkpoint -> export -> plain model with weights_only."""
import json
import os

import pytest
import torch

from engine_helpers import CEMethod, Data, make_cfg
from scaletrain.engine import Trainer, build_engine, init_distributed
from scaletrain.engine.export import export_main, export_run
from scaletrain.errors import UserError
from scaletrain.models import create_model


def test_export_round_trip_from_zero3_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path, "engine.backend=deepspeed", "engine.zero_stage=3", "train.ckpt_every=3",
                   "optim.name=adam")
    torch.manual_seed(0)
    eng = build_engine(cfg, create_model(cfg.model), init_distributed(cfg))
    run = tmp_path / "run"
    Trainer(cfg, eng, CEMethod(), Data(cfg, 0, 1, n=64), run_dir=str(run)).fit()
    (run / "config.yaml").write_text(open(os.path.join(run, "checkpoints", "step_000000004",
                                                       "config.yaml")).read())
    x = torch.rand(8, 1, 8, 8)
    eng.eval()
    with torch.no_grad():
        expected = eng.module(x)  # ZeRO-3 gathers the partitioned parameters for this forward
    assert export_main([str(run), "--out", str(tmp_path / "exp")]) == 0
    state = torch.load(tmp_path / "exp" / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    model = create_model(cfg.model)
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert (tmp_path / "exp" / "config.yaml").exists()
    # from a mid-run checkpoint folder too
    dst = export_run(str(run / "checkpoints" / "step_000000003"), str(tmp_path / "exp3"))
    assert torch.load(dst, weights_only=True).keys() == state.keys()
    with pytest.raises(UserError):
        export_run(str(tmp_path / "missing"))
