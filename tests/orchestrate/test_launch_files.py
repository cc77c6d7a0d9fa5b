"""CI checks for launch/ and docker/ (no Docker engine, no cluster here): the YAMLs parse and say
what docs/launch.md promises, their scaletrain commands are valid configs, the Dockerfiles'
instructions and RUN commands are well-formed, and every shell script passes shellcheck."""
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from scaletrain.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = ["launch/slurm.sh", "docker/install-deepspeed.sh"]
DOCKERFILES = ["docker/Dockerfile.gpu", "docker/Dockerfile.cpu"]
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "USER", "WORKDIR", "ENTRYPOINT", "CMD", "LABEL",
                "EXPOSE", "HEALTHCHECK", "SHELL", "VOLUME", "STOPSIGNAL", "ONBUILD"}


def _yaml(path):
    with open(os.path.join(REPO, path)) as f:
        return yaml.safe_load(f)


def _check_scaletrain_command(cmd: str):
    """`scaletrain train CONFIG k=v ...` must load as a valid config (keys and values)."""
    args = shlex.split(cmd)
    assert args[:2] == ["scaletrain", "train"], cmd
    config = args[2] if "=" not in args[2] else None
    if config:
        assert os.path.exists(os.path.join(REPO, config)), config
    cfg = load_config(os.path.join(REPO, config) if config else None, [a for a in args[3:] if "=" in a])
    return cfg


def test_aws_cluster_yaml():
    c = _yaml("launch/aws-gpu.yaml")
    assert c["provider"]["type"] == "aws" and c["head_node_type"] in c["available_node_types"]
    workers = [n for k, n in c["available_node_types"].items() if k != c["head_node_type"]]
    assert any(re.match(r"(g4dn|g5|g6|p3|p4d|p5)\.", n["node_config"]["InstanceType"]) for n in workers)
    assert "--gpus all" in c["docker"]["run_options"] and c["docker"]["image"].endswith(":gpu")
    assert any("ray start --head" in s for s in c["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in s for s in c["worker_start_ray_commands"])


def test_kuberay_rayjob_manifest():
    j = _yaml("launch/kuberay-rayjob.yaml")
    assert j["apiVersion"] == "ray.io/v1" and j["kind"] == "RayJob"
    cfg = _check_scaletrain_command(j["spec"]["entrypoint"])
    assert cfg.engine.launcher == "ray" and cfg.engine.gpus_per_worker == 1
    spec = j["spec"]["rayClusterSpec"]
    workers = spec["workerGroupSpecs"][0]
    gpus = int(workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert workers["replicas"] * gpus == cfg.engine.workers  # one Ray Train worker per GPU
    for tmpl in (spec["headGroupSpec"]["template"], workers["template"]):
        assert tmpl["spec"]["securityContext"]["runAsNonRoot"] is True
    assert yaml.safe_load(j["spec"]["runtimeEnvYAML"])["env_vars"]


def _dockerfile(path):
    with open(os.path.join(REPO, path)) as f:
        text = f.read().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_is_a_nonroot_ray_image(path):
    ins = _dockerfile(path)
    assert all(w in INSTRUCTIONS for w, _ in ins), [w for w, _ in ins if w not in INSTRUCTIONS]
    first = next(w for w, _ in ins if w != "ARG")
    assert first == "FROM"
    users = [r for w, r in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(r for w, r in ins if w == "RUN")
    assert re.search(r"ray\[default[^\]]*\]==", runs), "Ray cluster images need ray[default] (ray on PATH)"
    assert re.search(r"torch==\$\{TORCH_VERSION\}", runs) and "scaletrain" in runs
    for w, rest in ins:
        if w == "COPY":
            for src in rest.split()[:-1]:
                assert os.path.exists(os.path.join(REPO, src)), f"{path}: COPY source {src} missing"
    if path.endswith(".gpu"):
        assert ins[[w for w, _ in ins].index("FROM")][1].startswith("nvidia/cuda:")
        assert "install-deepspeed.sh" in runs and any("TORCH_CUDA_ARCH_LIST" in r for w, r in ins if w == "ARG")
    else:
        assert any("DS_ACCELERATOR=cpu" in r for w, r in ins if w == "ENV")


def _shellcheck(path_or_text, tmp_path=None, name="x.sh"):
    if tmp_path is not None:
        p = tmp_path / name
        p.write_text(path_or_text)
        path_or_text = str(p)
    r = subprocess.run(["bash", "-n", path_or_text], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck); bash -n passed")
    r = subprocess.run(["shellcheck", "-s", "bash", path_or_text], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_pass_shellcheck(script):
    path = os.path.join(REPO, script)
    assert os.access(path, os.X_OK), f"{script} is not executable"
    _shellcheck(path)


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_run_commands_pass_shellcheck(path, tmp_path):
    ins = _dockerfile(path)
    lines = ["#!/usr/bin/env bash", "set -e"]
    for w, rest in ins:
        if w in ("ARG", "ENV"):
            for part in shlex.split(rest):
                name, _, val = part.partition("=")
                assert '"' not in val and "`" not in val, part
                lines.append(f'export {name}="{val}"')  # Docker expands $VARS in ARG/ENV values
        elif w == "RUN":
            lines.append(rest)
    _shellcheck("\n".join(lines) + "\n", tmp_path, os.path.basename(path) + ".sh")


def test_slurm_script_starts_ray_and_runs_scaletrain():
    text = open(os.path.join(REPO, "launch/slurm.sh")).read()
    assert text.startswith("#!/usr/bin/env bash") and "#SBATCH --nodes" in text
    assert "ray start --head" in text and 'ray start --address="$RAY_ADDRESS"' in text and "--block" in text
    assert re.search(r"scaletrain train \"\$CONFIG\" engine.launcher=ray", text)
