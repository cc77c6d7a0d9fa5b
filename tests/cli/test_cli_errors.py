import subprocess
import sys

import pytest

from scaletrain.cli import main, split_config_and_overrides
from scaletrain.errors import UserError


def test_split_config_and_overrides():
    assert split_config_and_overrides(["c.yaml", "a=1", "b.c=2"]) == ("c.yaml", ["a=1", "b.c=2"])
    assert split_config_and_overrides(["a=1"]) == (None, ["a=1"])
    with pytest.raises(UserError):
        split_config_and_overrides(["a=1", "stray"])


@pytest.mark.parametrize("args,needle", [
    (["train", "nosuch.key=1"], "'nosuch.key'"),
    (["train", "train.epochs=many"], "'train.epochs'"),
    (["train", "missing.yaml"], "missing.yaml"),
    (["train", "model.name=resnet9000", "--print-config"], "'model.name'"),  # checked at load
    (["train", "model.kwargs={depthh: 3}", "--print-config"], "'model.kwargs.depthh'"),
])
def test_cli_user_errors_exit_2(args, needle, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_console_script_help_and_exit_code(tmp_path):
    out = subprocess.run([sys.executable, "-m", "scaletrain.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "key=value" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "scaletrain.cli", "train", "optim.lr=fast"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "'optim.lr'" in bad.stderr and "Traceback" not in bad.stderr


def test_launcher_misuse_is_a_user_error(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["train", "engine.launcher=torchrun"]) == 2
    assert "torchrun --nproc-per-node" in capsys.readouterr().err
    assert main(["train", "engine.workers=2"]) == 2
    assert "'engine.workers'" in capsys.readouterr().err
