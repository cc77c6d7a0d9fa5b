"""launch/slurm.sh's preemption logic, run for real by bash with stub `scontrol`, `srun`, `ray`
and `scaletrain` on PATH: SIGUSR1 (SLURM's pre-timeout signal) or SIGTERM (preemption) is
forwarded to `scaletrain train`, and exit 75 requeues the job (`scontrol requeue $SLURM_JOB_ID`);
a finished run, a crash without a signal, or too many requeues do not requeue."""
import os
import shutil
import signal
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STUBS = {
    "scontrol": """#!/usr/bin/env bash
case "$1" in
  show) echo node1 ;;
  requeue) echo "$2" >> "$STUB_LOG/requeue" ;;
  *) exit 9 ;;
esac
""",
    "srun": """#!/usr/bin/env bash
case "$*" in *hostname*) echo 10.0.0.1 ;; *) echo "srun $*" >> "$STUB_LOG/srun" ;; esac
""",
    "ray": """#!/usr/bin/env bash
echo "ray $*" >> "$STUB_LOG/ray"
""",
    # stands in for `scaletrain train`: records its arguments, then behaves as STUB_MODE says;
    # on SIGUSR1/SIGTERM it does what the real CLI does after its checkpoint: exit 75
    "scaletrain": """#!/usr/bin/env bash
echo "$*" > "$STUB_LOG/args"
case "$STUB_MODE" in finish) exit 0 ;; crash) exit 1 ;; esac
trap 'echo USR1 > "$STUB_LOG/signal"; exit 75' USR1
trap 'echo TERM > "$STUB_LOG/signal"; exit 75' TERM
while true; do sleep 0.05; done
""",
}


def _start(tmp_path, mode, **env_extra):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log), STUB_MODE=mode,
               SLURM_JOB_NODELIST="node1", SLURM_JOB_ID="4242", SCALETRAIN_RAY_WAIT_S="0", **env_extra)
    p = subprocess.Popen(["bash", os.path.join(REPO, "launch", "slurm.sh"), "configs/default.yaml",
                          "train.epochs=2"], env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    return p, log


def _signal_when_training(p, log, sig):
    t0 = time.time()
    while not (log / "args").exists():
        assert p.poll() is None and time.time() - t0 < 60, p.communicate()[0]
        time.sleep(0.05)
    time.sleep(0.2)  # inside `wait`
    p.send_signal(sig)
    return p.communicate(timeout=60)[0]


@pytest.mark.timeout(120)
def test_slurm_script_passes_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    subprocess.run(["shellcheck", os.path.join(REPO, "launch", "slurm.sh")], check=True)
    text = open(os.path.join(REPO, "launch", "slurm.sh")).read()
    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_is_forwarded_and_the_job_requeued(tmp_path, sig):
    p, log = _start(tmp_path, "preempt")
    out = _signal_when_training(p, log, sig)
    assert p.returncode == 0, out
    assert (log / "signal").read_text().strip() == sig.name[3:]  # forwarded as it came
    assert (log / "requeue").read_text().split() == ["4242"]
    args = (log / "args").read_text().split()
    assert args[:2] == ["train", "configs/default.yaml"] and "resume=auto" in args and "train.epochs=2" in args
    assert "engine.launcher=ray" in args
    assert "requeueing job 4242" in out and "ray stop" in (log / "ray").read_text()


@pytest.mark.timeout(120)
def test_no_requeue_after_too_many(tmp_path):
    p, log = _start(tmp_path, "preempt", SLURM_RESTART_COUNT="3", SCALETRAIN_MAX_REQUEUES="3")
    out = _signal_when_training(p, log, signal.SIGUSR1)
    assert p.returncode == 75, out
    assert not (log / "requeue").exists() and "not requeueing" in out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode,code", [("finish", 0), ("crash", 1)])
def test_no_requeue_without_preemption(tmp_path, mode, code):
    p, log = _start(tmp_path, mode)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == code, out
    assert not (log / "requeue").exists()
