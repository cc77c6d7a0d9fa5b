"""A signal in the middle of a checkpoint write (real CLI process, DeepSpeed ZeRO-1 files already
written, meta.json not yet): one SIGTERM lets the write complete and the run stops at the next
step with exit 75; a second SIGTERM exits at once (143), leaving the previous checkpoint valid and
the new one absent. Both runs then resume with resume=auto to the same final weights."""
import os
import subprocess
import sys

import pytest

from preempt_helpers import BASE, env, same_weights
from scaletrain.engine.checkpoint import latest_checkpoint, list_checkpoints, read_meta
from scaletrain.errors import EXIT_PREEMPTED

HERE = os.path.dirname(__file__)
EVERY, AT = 4, 8


def _run(tmp_path, name, times=0, resume=False):
    args = [*BASE, f"out_dir={tmp_path}", f"data.root={tmp_path}/data", "train.epochs=1", f"name={name}",
            "engine.zero_stage=1", f"train.ckpt_every={EVERY}", "train.keep_last=3"]
    if resume:
        args.append("resume=auto")
    p = subprocess.run([sys.executable, os.path.join(HERE, "preempt_write_worker.py"), str(AT), str(times), *args],
                       env=env(), capture_output=True, text=True, timeout=400)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_signal_during_checkpoint_write(tmp_path):
    # one signal mid-write: the write completes, the stop comes at the next step
    rc, out = _run(tmp_path, "once", times=1)
    assert rc == EXIT_PREEMPTED, out[-3000:]
    ckpts = list_checkpoints(str(tmp_path / "once" / "checkpoints"))
    assert [read_meta(c)["step"] for c in ckpts] == [EVERY, AT, AT + 1]
    assert read_meta(ckpts[-1])["interrupted"] == "SIGTERM" and "interrupted" not in read_meta(ckpts[1])

    # two signals mid-write: exit at once; the step-AT folder is a leftover .tmp, never used
    rc, out = _run(tmp_path, "twice", times=2)
    assert rc == 128 + 15, out[-3000:]
    assert "second signal (SIGTERM): exiting now" in out
    root = tmp_path / "twice" / "checkpoints"
    assert sorted(os.listdir(root)) == [f".tmp-step_{AT:09d}", f"step_{EVERY:09d}"]
    assert read_meta(str(root / f".tmp-step_{AT:09d}")) is None
    assert latest_checkpoint(str(root)) == str(root / f"step_{EVERY:09d}")

    for name in ("once", "twice"):
        rc, out = _run(tmp_path, name, resume=True)
        assert rc == 0, out[-3000:]
    assert same_weights(tmp_path / "once", tmp_path / "twice")
    assert not any(n.startswith(".tmp-") for n in os.listdir(root))
