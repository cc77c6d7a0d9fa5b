"""Two Ray nodes on one machine (`ray start --head` + `ray start --address=...`, each with its own
custom resource): a 2-worker run spread over both nodes, submitted with `scaletrain launch` and
run with `scaletrain train engine.launcher=ray`; the second node's raylet is killed mid-run and
`engine.max_failures` restarts the workers from the last checkpoint. The run folder lives on a
path both nodes see (the shared-storage rule, docs/launch.md). Where mount namespaces are permitted
(root, `unshare -m`), the second node runs in its own one with a tmpfs over one folder: that folder
is genuinely node-local, and a run whose out_dir is there must stop with the shared-storage error."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from scaletrain.cli import main
from scaletrain.engine.dist import free_port
from scaletrain.errors import UserError
from scaletrain.orchestrate.launch import launch_main
from scaletrain.orchestrate.ray_train import check_shared_storage, write_storage_token

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = ["method.attack.steps=3", "eval.attacks=[pgd]", "eval.eps=[0.0,0.1]", "eval.pgd_steps=2",
       "eval.max_samples=64", "model.width=8", "tracking.wandb=false", "train.progress=false",
       "engine.launcher=ray", "engine.workers=2", "engine.placement=SPREAD"]


def _ray(*args, env, node_local=None):
    """`ray start --block ...`; with `node_local`, in a private mount namespace with a tmpfs mounted
    over that folder (the node's processes see an empty folder there; the namespace and its mount
    end with the node's last process)."""
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    cmd = [ray_bin, "start", "--block", "--disable-usage-stats", *args]
    if node_local:
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               f'mount -t tmpfs tmpfs "{node_local}" && exec "$@"', "sh", *cmd]
    return subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def _can_mount_privately(folder) -> bool:
    """Root with mount namespaces (unprivileged CI usually is not): unshare + tmpfs mount works."""
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f'mount -t tmpfs tmpfs "{folder}" && umount "{folder}"'], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    ray = pytest.importorskip("ray")
    pytest.importorskip("aiohttp", reason="the Ray Jobs API needs ray[default]")
    temp = tmp_path_factory.mktemp("raytwo")
    port, dash = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", DS_ACCELERATOR="cpu", PYTHONPATH=REPO)
    head = _ray("--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                '--resources={"head_node": 2}', "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}", f"--temp-dir={temp}", env=env)
    procs = [head]
    os.environ["RAY_AUTH_MODE"] = "disabled"
    try:
        deadline = time.time() + 120
        while True:   # the head is up when a driver can join it
            try:
                ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
                break
            except Exception:  # noqa: BLE001
                if time.time() > deadline or head.poll() is not None:
                    pytest.fail("the Ray head did not come up")
                time.sleep(2)
        local = temp / "node_local"      # node_b's own tmpfs (if permitted); shared everywhere else
        local.mkdir()
        local = str(local) if _can_mount_privately(local) else None
        procs.append(_ray(f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                          '--resources={"node_b": 2}', env=env, node_local=local))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if time.time() > deadline + 60:
                pytest.fail("the second Ray node did not join")
            time.sleep(1)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "ray": ray,
               "node_local": local}
    finally:
        ray.shutdown()
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        os.environ.pop("RAY_AUTH_MODE", None)
        shutil.rmtree(temp, ignore_errors=True)


def _placements(run_dir):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(run_dir, "ray_nodes", "*.json")))]


def _node_b(ray):
    return [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node_b" in n["Resources"]][0]


def _raylet_of(node_resource: str):
    import psutil
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in (p.info["name"] or "") and node_resource in cmd:
            return p
    return None


def test_out_dir_not_visible_from_a_node_is_a_user_error(tmp_path):
    token = write_storage_token(str(tmp_path / "shared"))
    check_shared_storage(str(tmp_path / "shared"), token, "here")           # the driver's node sees it
    with pytest.raises(UserError, match="out_dir.*not shared.*node b1"):    # another node's view
        check_shared_storage(str(tmp_path / "elsewhere"), token, "b1")


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_node_local_out_dir_on_two_nodes_fails_fast_naming_out_dir(two_nodes, tmp_path, capsys):
    local = two_nodes["node_local"]
    if local is None:
        pytest.skip("mount namespaces are not permitted here (unshare -m + mount tmpfs needs root)")
    # out_dir under the folder node_b sees as its own empty tmpfs: the worker placed there cannot
    # see the driver's files. STRICT_SPREAD: one worker per node.
    t0 = time.time()
    rc = main(["train", f"out_dir={local}/runs", f"data.root={tmp_path}/data", "name=nodelocal", "train.epochs=1",
               f"engine.ray_address={two_nodes['address']}", *RUN, "engine.placement=STRICT_SPREAD"])
    seconds = time.time() - t0
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    line = [ln for ln in err.splitlines() if "error:" in ln][-1]
    assert f"key 'out_dir': {local}/runs is not shared" in line and "docs/launch.md" in line, line
    assert "Ray node " + _node_b(two_nodes["ray"])[:12] in line          # names the node that cannot see it
    assert not os.path.exists(os.path.join(local, "runs", "nodelocal", "report.json"))
    assert seconds < 90, seconds                                          # fails fast, before any training


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_two_nodes_launch_then_node_killed_mid_run_restarts_and_finishes(two_nodes, tmp_path, monkeypatch, capsys):
    ray, node_b = two_nodes["ray"], _node_b(two_nodes["ray"])
    # both nodes share 127.0.0.1, so this driver may be attached to either raylet; Ray Train runs
    # its controller on the driver's node: the node to kill is the other one
    here = ray.get_runtime_context().get_node_id()
    victim = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here][0]
    victim_res = "node_b" if "node_b" in victim["Resources"] else "head_node"
    data = f"data.root={tmp_path}/data"
    # 1) Ray Jobs submission: the job's driver runs on the head, its 2 workers spread over both nodes
    monkeypatch.chdir(REPO)
    rc = launch_main(["--address", two_nodes["dashboard"], "--python", sys.executable, "--env", "DS_ACCELERATOR=cpu",
                      "configs/default.yaml", f"out_dir={tmp_path}/runs", data, "name=launched", "train.epochs=1",
                      *RUN])
    logs = capsys.readouterr().out
    assert rc == 0, logs[-3000:]
    launched = str(tmp_path / "runs" / "launched")
    assert json.load(open(os.path.join(launched, "report.json")))["train"]["world_size"] == 2
    nodes = {p["rank"]: p["node_id"] for p in _placements(launched)}
    assert len(set(nodes.values())) == 2 and node_b in nodes.values()

    # 2) `scaletrain train engine.launcher=ray` against the cluster; the other node's raylet is killed
    #    once the step-8 checkpoint is on disk; max_failures=1 restarts both workers (on the
    #    surviving node) from it
    run_dir = tmp_path / "runs" / "killed"
    killed = {}

    def killer():
        deadline = time.time() + 400
        while time.time() < deadline and not (run_dir / "checkpoints" / "step_000000008" / "meta.json").exists():
            time.sleep(0.05)
        p = _raylet_of(victim_res)
        if p is not None:
            p.send_signal(signal.SIGKILL)
            killed["pid"] = p.pid
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    assert main(["train", f"out_dir={tmp_path}/runs", data, "name=killed", "train.epochs=4", "train.ckpt_every=4",
                 "engine.max_failures=1", f"engine.ray_address={two_nodes['address']}", *RUN]) == 0
    t.join(5)
    assert "pid" in killed, "the other node's raylet was not found or the checkpoint never appeared"
    report = json.load(open(run_dir / "report.json"))
    assert report["train"]["world_size"] == 2
    resumed = int(os.path.basename(report["train"]["resumed_from"]).split("_")[1])
    assert resumed >= 8
    placed = _placements(str(run_dir))
    assert any(p["node_id"] == victim["NodeID"] for p in placed), "no worker ever ran on the killed node"
    assert len(placed) >= 4 and {p["rank"] for p in placed} == {0, 1}      # both ranks ran twice
    steps = [json.loads(x)["step"] for x in open(run_dir / "train_log.jsonl")]
    assert steps == list(range(10, report["train"]["global_step"] + 1, 10))   # log_every=10, each step once
