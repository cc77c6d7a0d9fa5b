"""`scaletrain launch` against a real Ray head (`ray start --head` on 127.0.0.1), stopped afterwards."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from scaletrain.engine.dist import free_port
from scaletrain.errors import UserError
from scaletrain.orchestrate.launch import build_entrypoint, launch_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["train.epochs=1", "eval.pgd_steps=2", "eval.max_samples=64", "eval.eps=[0.0,0.1]", "method.attack.steps=1",
        "tracking.wandb=false", "model.width=8", "train.progress=false", "engine.workers=2"]


@pytest.fixture
def ray_head(tmp_path_factory):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    assert os.path.exists(ray_bin), "the ray CLI is not installed next to this python"
    pytest.importorskip("aiohttp", reason="the Ray Jobs API needs ray[default] (dashboard packages)")
    temp = tmp_path_factory.mktemp("rayhead")
    port, dash = free_port(), free_port()
    # a throwaway cluster on 127.0.0.1: no token auth (Ray >= 2.5x enables it for new clusters;
    # real clusters keep it and the client reads RAY_AUTH_TOKEN / ~/.ray/auth_token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "disabled"
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
                             "--num-cpus=3", "--disable-usage-stats", f"--temp-dir={temp}"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # it answers (401 without Ray's auth token): it is up
            break
        except OSError:
            if time.time() > deadline or head.poll() is not None:
                if head.poll() is None:
                    os.killpg(head.pid, signal.SIGTERM)
                pytest.fail("the Ray head did not come up")
            time.sleep(1)
    yield url
    os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started on SIGTERM
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def test_entrypoint_adds_ray_launcher():
    e = build_entrypoint("python", "configs/default.yaml", ["train.epochs=1"])
    assert e == "python -m scaletrain.cli train configs/default.yaml train.epochs=1 engine.launcher=ray"
    assert build_entrypoint("py", None, ["engine.launcher=local"]).endswith("engine.launcher=local")


def test_launch_user_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(UserError, match="address"):
        launch_main(["configs/default.yaml"])
    with pytest.raises(UserError, match="not found"):
        launch_main(["--address", "http://127.0.0.1:1", str(tmp_path / "nope.yaml")])


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_launch_runs_job_on_local_head_and_returns_its_status(ray_head, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    out = tmp_path / "runs"
    rc = launch_main(["--address", ray_head, "--python", sys.executable, "--env", "DS_ACCELERATOR=cpu",
                      "configs/default.yaml", f"out_dir={out}", f"data.root={tmp_path}/data", "name=launched", *TINY])
    logs = capsys.readouterr().out
    assert rc == 0, logs[-3000:]
    assert "submitted raysubmit_" in logs and "SUCCEEDED" in logs
    assert "worst case" in logs  # the job's own output (its robustness table) was streamed back
    report = json.loads((out / "launched" / "report.json").read_text())
    assert report["train"]["world_size"] == 2 and (out / "launched" / "model.pt").exists()
    # a job that fails (a config error inside the job) makes launch exit 1
    rc = launch_main(["--address", ray_head, "--python", sys.executable, "--env", "DS_ACCELERATOR=cpu",
                      f"out_dir={out}", "train.epochs=-1"])
    logs = capsys.readouterr().out
    assert rc == 1 and "FAILED" in logs and "train.epochs" in logs
