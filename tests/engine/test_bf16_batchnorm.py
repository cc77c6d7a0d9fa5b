"""`engine.precision=bf16` with the default BatchNorm CNN through the DeepSpeed engine on CPU.
DeepSpeed's bf16 mode casts the parameters but not the buffers, so BatchNorm's eval forward saw bf16
weights with fp32 running statistics and the run died before its first step ("expected scalar type
BFloat16 but found Float", from the stage's FLOP count in eval mode). The engine now casts the
float buffers; the run must train, evaluate and write a report."""
import json

import pytest

from scaletrain.cli import main


@pytest.mark.timeout(300)
def test_bf16_batchnorm_cnn_trains_and_evaluates(tmp_path):
    args = ["train", f"out_dir={tmp_path}/runs", f"data.root={tmp_path}/data", "name=bf16",
            "engine.precision=bf16", "engine.zero_stage=1", "train.epochs=1",
            "method.name=standard", "eval.max_samples=128", "eval.eps=[0.0,0.1]", "eval.pgd_steps=3",
            "train.progress=false", "tracking.wandb=false"]
    assert main(args) == 0
    rep = json.loads((tmp_path / "runs" / "bf16" / "report.json").read_text())
    assert rep["clean_acc"] > 0.5, rep["clean_acc"]          # 1 epoch of digits: far above chance (0.1)
