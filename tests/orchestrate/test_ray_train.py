"""Ray Train V2 launcher with real local Ray and 2 CPU workers (DeepSpeed ZeRO-2 on gloo)."""
import json
import os
import signal
import sys
import threading
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "engine"))

from engine_helpers import make_cfg  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, os.path.join(os.path.dirname(HERE), "engine"),
                                                os.environ.get("PYTHONPATH", "")])
    os.environ["DS_ACCELERATOR"] = "cpu"
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def _pids(run_dir, rank):
    return sorted(int(n.split("-")[1]) for n in os.listdir(os.path.join(run_dir, "pids")) if n.startswith(f"rank{rank}-"))


def test_worker_killed_mid_run_restarts_from_checkpoint_and_finishes(ray_local, tmp_path):
    from scaletrain.orchestrate.ray_train import run_with_ray
    cfg = make_cfg(tmp_path, "engine.launcher=ray", "engine.workers=2", "engine.zero_stage=2",
                   "engine.max_failures=1", "train.epochs=2", "train.ckpt_every=2", "model.name=mlp",
                   "engine.global_batch_size=32", "optim.name=adam", "optim.lr=0.01")
    run_dir = str(tmp_path / "run")
    os.environ["ST_TEST_STEP_SLEEP"] = "0.3"
    killed = {}

    def killer():  # kill rank 1's process once the step-8 checkpoint is complete
        target = os.path.join(run_dir, "checkpoints", "step_000000008", "meta.json")
        deadline = time.time() + 400
        while time.time() < deadline and not os.path.exists(target):
            time.sleep(0.05)
        if os.path.exists(target):
            pid = _pids(run_dir, 1)[0]
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        report = run_with_ray(cfg, worker="ray_fixture_worker:tiny_worker", run_dir=run_dir)
    finally:
        os.environ.pop("ST_TEST_STEP_SLEEP", None)
    t.join(5)
    assert "pid" in killed, "the step-8 checkpoint never appeared"
    # 256 samples / global batch 32 = 8 steps per epoch, 2 epochs
    assert report["train"]["global_step"] == 16
    assert report["train"]["resumed_from"], "the restarted workers did not resume from a checkpoint"
    resumed_step = int(os.path.basename(report["train"]["resumed_from"]).split("_")[1])  # (since pruned)
    assert 8 <= resumed_step < 16
    # Ray handed the restarted workers its last registered checkpoint (steps 2-8 were reported
    # seconds before the kill; Ray polls every 2 s); the newest of it and the run folder's is used
    src = report["resume_source"]
    assert src["ray_checkpoint"] and os.path.basename(src["ray_checkpoint"]).startswith("step_")
    assert len(_pids(run_dir, 1)) == 2 and killed["pid"] in _pids(run_dir, 1)  # a new rank-1 process
    # Ray's storage holds its copies of reported checkpoints and the final report
    stored = os.listdir(report["ray"]["storage"])
    assert "final_report" in stored and any(n.startswith("step_") for n in stored), stored
    # every step was logged exactly once and the weights are finite and trained
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "train_log.jsonl"))]
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert rows[-1]["loss"] < rows[0]["loss"]
    sd = torch.load(os.path.join(run_dir, "model.pt"), weights_only=True)
    assert all(torch.isfinite(v).all() for v in sd.values())
