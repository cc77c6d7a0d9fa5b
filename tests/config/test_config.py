import pytest
from omegaconf import OmegaConf

from scaletrain.config import config_from_dict, load_config, save_config, to_dict
from scaletrain.errors import ConfigError


def test_default_yaml_equals_schema_defaults(repo_root):
    assert to_dict(load_config(str(repo_root / "configs" / "default.yaml"))) == to_dict(load_config())


def test_overrides_apply_with_types():
    cfg = load_config(None, ["train.epochs=3", "method.attack.eps=0.1", "eval.eps=[0,0.1]",
                             "engine.zero_stage=2", "tracking.wandb=false"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.method.attack.eps == pytest.approx(0.1)
    assert list(cfg.eval.eps) == [0, 0.1]
    assert cfg.engine.zero_stage == 2 and cfg.tracking.wandb is False


def test_yaml_then_overrides_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\noptim:\n  lr: 0.5\n")
    cfg = load_config(str(f), ["optim.lr=0.25"])
    assert cfg.train.epochs == 7 and cfg.optim.lr == 0.25


@pytest.mark.parametrize("override,key", [
    ("train.epochz=3", "train.epochz"),
    ("foo=1", "foo"),
    ("data.batch_size=abc", "data.batch_size"),
    ("engine.zero_stage=7", "engine.zero_stage"),
    ("engine.precision=fp8", "engine.precision"),
    ("data.batch_size=0", "data.batch_size"),
    ("eval.eps=[0,-0.1]", "eval.eps.1"),
])
def test_bad_override_names_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"'{key}'" in str(e.value)


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  widht: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert "bad.yaml" in str(e.value) and "model.widht" in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    f = tmp_path / "broken.yaml"
    f.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml.*invalid YAML"):
        load_config(str(f))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "name=x"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = config_from_dict(OmegaConf.to_container(OmegaConf.load(tmp_path / "config.yaml")))
    assert to_dict(again) == to_dict(cfg)


def test_configuration_reference_is_current(repo_root):
    from scaletrain.config.reference import render
    committed = (repo_root / "docs" / "configuration.md").read_text()
    assert committed == render(), "regenerate: python -m scaletrain.config.reference > docs/configuration.md"


def test_string_overrides_kept_verbatim():
    """YAML reads `on` as true, 0x10 as 16 and 010 as 8: a string key keeps the text as written."""
    from scaletrain.config import load_config
    for raw, want in (("on", "on"), ("0x10", "0x10"), ("010", "010"), ("'yes'", "yes"), ("run-1", "run-1")):
        assert load_config(None, [f"name={raw}"]).name == want
    assert load_config(None, ["eval.pgd_alpha=null"]).eval.pgd_alpha is None
    assert load_config(None, ["train.epochs=3"]).train.epochs == 3
