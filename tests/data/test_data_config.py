"""Data keys of the config: validation errors name the key; the default config gives the default data."""
from __future__ import annotations

import pytest

from scaletrain.config import load_config
from scaletrain.errors import ConfigError


@pytest.mark.parametrize("override,key", [
    ("data.epoch_size=0", "data.epoch_size"),
    ("data.augment.resize=-2", "data.augment.resize"),
    ("data.augment.crop_padding=-1", "data.augment.crop_padding"),
    ("data.shuffle_buffer=-5", "data.shuffle_buffer"),
    ("data.mode=random", "data.mode"),
    ("data.on_error=ignore", "data.on_error"),
])
def test_bad_data_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, [override])


def test_default_config_data(tmp_path):
    from scaletrain.data import dataset_info, eval_loader, prepare, train_loader

    cfg = load_config(None, [f"data.root={tmp_path / 'digits'}"])
    m = prepare(cfg.data, progress=False)
    assert [s["samples"] for s in m["splits"]["train"]["shards"]] == [256] * 5 + [1438 - 5 * 256]
    info = dataset_info(cfg.data)
    assert info["image_shape"] == (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    assert info["num_classes"] == cfg.model.num_classes == 10
    L = train_loader(cfg.data, epoch=0)
    assert len(L) == 23 and sum(len(y) for _, y in L) == 1438
    assert sum(len(y) for _, y in eval_loader(cfg.data)) == 359
