"""Bad options of the noise / mixing / regulariser methods stop at load with the key named (exit 2)."""
import re

import pytest

from scaletrain.cli import main as cli_main
from scaletrain.config import load_config
from scaletrain.errors import ConfigError
from scaletrain.methods import available, create_method


@pytest.mark.parametrize("override, key", [
    ("method.extra=[{name: gaussian_noise, kwargs: {sigma: 1.5}}]", "method.extra.0.kwargs.sigma"),
    ("method.extra=[{name: gaussian_noise, kwargs: {sigma: -0.1}}]", "method.extra.0.kwargs.sigma"),
    ("method.extra=[{name: gaussian_noise, kwargs: {sigma: 0.0}}]", "method.extra.0.kwargs.sigma"),
    ("method.extra=[{name: gaussian_noise, kwargs: {sigma: high}}]", "method.extra.0.kwargs.sigma"),
    ("method.extra=[{name: cutmix, kwargs: {prob: 1.5}}]", "method.extra.0.kwargs.prob"),
    ("method.extra=[{name: cutmix, kwargs: {alpha: 0}}]", "method.extra.0.kwargs.alpha"),
    ("method.extra=[{name: cutmix, kwargs: {alpah: 1.0}}]", "method.extra.0.kwargs.alpah"),
    ("method.extra=[{name: mixup, kwargs: {alpha: -1}}]", "method.extra.0.kwargs.alpha"),
    ("method.extra=[{name: cutout, kwargs: {size: 0}}]", "method.extra.0.kwargs.size"),
    ("method.extra=[{name: cutout, kwargs: {fill: 2.0}}]", "method.extra.0.kwargs.fill"),
    ("method.extra=[{name: cutmix}, {name: confidence_penalty, kwargs: {beta: -1}}]", "method.extra.1.kwargs.beta"),
    ("method.extra=[{name: vib, kwargs: {beta: 5}}]", "method.extra.0.kwargs.beta"),
    ("model.pni=both", "model.pni"),
    ("model.pni_init=-0.5", "model.pni_init"),
    ("model.vib_dim=-3", "model.vib_dim"),
    ("model.kwargs.dropblock_prob=1.0", "model.kwargs.dropblock_prob"),
    ("model.kwargs.dropblock_size=0", "model.kwargs.dropblock_size"),
    ("eval.eot_samples=0", "eval.eot_samples"),
    ("method.extra=[{name: pni}]", "method.extra.0.name"),
    ("method.extra=[{name: cutmix}, {name: vib}]", "method.extra.1.name"),
])
def test_out_of_range_options_name_their_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, key", [
    (["method.name=huber", "method.huber_delta=0"], "method.huber_delta"),
    (["method.name=huber", "method.huber_delta=-1"], "method.huber_delta"),
    (["method.name=huber", "method.huber_delta=inf"], "method.huber_delta"),
    (["method.name=huber", "method.huber_delta=wide"], "method.huber_delta"),          # not a float
    (["method.name=huber", "method.kwargs.delta=0.5"], "method.kwargs.delta"),         # the old spelling
    (["method.name=huber", "method.kwargs.beta=0.5"], "method.kwargs"),
    (["method.name=pgd_at", "method.huber_delta=0.5"], "method.huber_delta"),           # no Huber loss there
    (["method.name=huber", "stages=[{name: a, epochs: 1, method: {huber_delta: -2}}]"], "stages[0].method.huber_delta"),
])
def test_huber_delta_is_a_typed_key_checked_at_load(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(f"key '{key}")):
        load_config(None, overrides)


def test_huber_delta_reaches_the_method():
    assert create_method(load_config(None, ["method.name=huber"]).method).delta == 1.0
    assert create_method(load_config(None, ["method.name=huber", "method.huber_delta=0.25"]).method).delta == 0.25


def test_cli_exits_2_naming_huber_delta(capsys):
    code = cli_main(["train", "method.name=huber", "method.huber_delta=-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "key 'method.huber_delta'" in err[0] and "> 0" in err[0]


def test_huber_options_and_combinations():
    with pytest.raises(ConfigError, match="key 'method.extra.0.name'"):   # a loss method is no add-on
        load_config(None, ["method.extra=[{name: huber}]"])
    cfg = load_config(None, ["method.name=trades" if "trades" in available() else "method.name=pgd_at",
                             "method.extra=[{name: cutmix, kwargs: {alpha: 0.5}}, {name: confidence_penalty}]"])
    m = create_method(cfg.method)
    assert [x.name for x in m.methods][1:] == ["cutmix", "confidence_penalty"]
    assert m.methods[1].opt.alpha == 0.5 and m.methods[2].opt.beta == 0.1


def test_cli_exits_2_with_one_line(capsys):
    code = cli_main(["train", "method.extra=[{name: gaussian_noise, kwargs: {sigma: 3}}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "method.extra.0.kwargs.sigma" in err[0]
