"""Attack budgets outside the pixel range and other out-of-range evaluation keys stop at load time,
through the real CLI (`scaletrain train` and `scaletrain eval`): exit 2, one line naming the key."""
import pytest

from scaletrain.cli import main
from scaletrain.config import load_config, save_config

BAD = [
    (["eval.eps=[0.5,2.0]"], "'eval.eps.1'"),                 # the example: linf eps > 1
    (["eval.eps=[-0.1]"], "'eval.eps.0'"),
    (["eval.eps=[]"], "'eval.eps'"),
    (["eval.norm=l2", "eval.eps=[0.5,9.0]"], "'eval.eps.1'"),  # > sqrt(1*8*8), the 8x8 image cube's diameter
    (["method.attack.eps=8"], "'method.attack.eps'"),         # 8 meant as 8/255
    (["method.attack.alpha=0"], "'method.attack.alpha'"),
    (["eval.noise_sigmas=[0.1,-0.2]"], "'eval.noise_sigmas.1'"),
    (["eval.pgd_alpha=-0.01"], "'eval.pgd_alpha'"),
    (["eval.max_samples=0"], "'eval.max_samples'"),
    (["eval.cpu_threads=-1"], "'eval.cpu_threads'"),
    (["eval.restarts=0"], "'eval.restarts'"),
    (["data.split=official"], "'data.split'"),                # digits have no published split
    (["data.split=paper"], "'data.split'"),
]


@pytest.mark.parametrize("overrides,needle", BAD)
def test_train_rejects_at_load(overrides, needle, capsys, tmp_path):
    rc = main(["train", f"out_dir={tmp_path}/runs", f"data.root={tmp_path}/data", *overrides])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()   # nothing started


def test_valid_edges_pass():
    cfg = load_config(None, ["eval.eps=[0.0,1.0]", "method.attack.eps=1.0", "eval.norm=l2", "eval.eps=[8.0]"])
    assert list(cfg.eval.eps) == [8.0]


def test_eval_rejects_out_of_range_override(tmp_path, capsys):
    """`scaletrain eval RUN eval.eps=[0.5,2.0]` on a run folder: exit 2 before any model is loaded."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, []), str(run / "config.yaml"))
    (run / "model.pt").write_bytes(b"never read")
    rc = main(["eval", str(run), "eval.eps=[0.5,2.0]"])
    err = capsys.readouterr().err
    assert rc == 2 and "'eval.eps.1'" in err and "[0, 1]" in err
    assert len(err.strip().splitlines()) == 1
