"""Every shipped config (configs/*.yaml) and recipe loads and validates (stages included); the two-stage digits recipe trains
end to end through the CLI, and its report shows both stages with their compute."""
import glob
import json
import os
import subprocess
import sys

import pytest

from scaletrain.config import load_config
from scaletrain.engine.stages import plan_stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))) +
                         [p for p in sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")))
                          if os.path.basename(os.path.dirname(p)) in ("digits", "mnist", "imagenet")])
def test_recipe_loads(path):
    cfg = load_config(path)
    for s in plan_stages(cfg):
        assert s.epochs > 0 or s.samples
    if "advxl" in path:
        weak, strong = plan_stages(cfg)
        assert weak.method.attack.steps < strong.method.attack.steps
        assert weak.method.attack.eps == strong.method.attack.eps == cfg.method.attack.eps


def test_digits_two_stage_recipe_runs_from_its_yaml(tmp_path):
    p = subprocess.run([sys.executable, "-m", "scaletrain.cli", "train", os.path.join(ROOT, "configs", "digits",
                        "advxl_two_stage.yaml"), f"out_dir={tmp_path}", f"data.root={tmp_path}/data",
                        "tracking.wandb=true", "tracking.mode=offline", "train.progress=false", "stages.0.epochs=2", "stages.1.epochs=1",
                        "eval.max_samples=128", "eval.pgd_steps=5"],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((tmp_path / "advxl_digits" / "report.json").read_text())
    weak, strong = rep["stages"]
    assert (weak["name"], weak["image_size"], weak["attack_steps"]) == ("weak", 4, 1)
    assert (strong["name"], strong["image_size"], strong["attack_steps"]) == ("strong", 8, 3)
    assert weak["samples"] == 2 * 1438 and strong["samples"] == 1438
    assert weak["attack_fwd_bwd_passes"] == weak["samples"] and strong["attack_fwd_bwd_passes"] == 3 * 1438
    assert weak["pass_gflops"] < strong["pass_gflops"]            # 4x4 inputs cost less than 8x8
    md = (tmp_path / "advxl_digits" / "report.md").read_text()
    assert "## Training stages" in md and "| weak |" in md and "| strong |" in md
    assert rep["clean_acc"] > 0.3
    # W&B (offline run file): each stage logs under its own name
    from scaletrain.track.wandb_tracker import find_offline_runs, read_offline_history
    rows = read_offline_history(find_offline_runs(str(tmp_path / "advxl_digits"))[0])
    weak_rows = [r for r in rows if "weak/attack_steps" in r]
    strong_rows = [r for r in rows if "strong/attack_steps" in r]
    assert weak_rows and strong_rows
    assert weak_rows[-1]["weak/attack_steps"] == 1 and weak_rows[-1]["weak/image_size"] == 4
    assert strong_rows[-1]["strong/attack_steps"] == 3 and strong_rows[-1]["strong/attack_fwd_bwd_passes"] > 0
