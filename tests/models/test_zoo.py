"""Zoo architectures: parameter counts against the published nets, shapes, describe(), config checks."""
import pytest
import torch

from scaletrain.config import load_config
from scaletrain.errors import ConfigError
from scaletrain.models import available, check_data, create_model
from scaletrain.models.common import count_parameters

# published / reference-implementation parameter counts at 10 classes
PUBLISHED = {
    ("preact_resnet18", 3, 32): 11_172_170,   # 11.17M (Rice et al. 2020 PreActResNet18, with final BN)
    ("wrn_28_10", 3, 32): 36_479_194,         # WRN-28-10, Zagoruyko & Komodakis 2016: 36.5M
    ("wrn_34_10", 3, 32): 46_160_474,         # WRN-34-10 (TRADES, Madry CIFAR): 46.2M
    ("wong_mnist", 1, 28): 166_406,           # conv16-conv32-FC1568x100-FC100x10
    ("madry_mnist", 1, 28): 3_274_634,        # MNIST challenge model
    ("trades_smallcnn", 1, 28): 312_202,      # TRADES SmallCNN
}


def _cfg(name, *over):
    return load_config(None, [f"model.name={name}", *over]).model


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_parameter_counts_match_published(key):
    name, c, size = key
    with torch.device("meta"):  # no memory, no init cost
        model = create_model(_cfg(name, f"model.in_channels={c}", f"model.image_size={size}"))
    assert count_parameters(model) == PUBLISHED[key]


@pytest.mark.parametrize("name,c,size,width", [
    ("wong_mnist", 1, 28, None), ("madry_mnist", 1, 8, 4), ("trades_smallcnn", 1, 16, 4),
    ("preact_resnet18", 3, 16, 4), ("wrn_28_10", 3, 16, 1), ("mlp", 1, 8, None), ("digits_cnn", 1, 8, None),
])
def test_forward_shape_and_describe(name, c, size, width):
    over = [f"model.in_channels={c}", f"model.image_size={size}", "model.num_classes=7"]
    if width:
        over.append(f"model.width={width}")
    model = create_model(_cfg(name, *over))
    assert model(torch.rand(3, c, size, size)).shape == (3, 7)
    d = model.describe()
    assert d["params"] == count_parameters(model) and d["flops_per_sample"] > 0


def test_describe_flops_exact_for_wong():
    # conv1: 16*1*4*4 MACs at 14x14, conv2: 32*16*16 at 7x7, fc 1568x100 + 100x10; x2 FLOPs per MAC
    macs = 16 * 16 * 14 * 14 + 32 * 16 * 16 * 7 * 7 + 1568 * 100 + 100 * 10
    assert create_model(_cfg("wong_mnist", "model.image_size=28")).describe()["flops_per_sample"] == 2 * macs


def test_normalisation_inside_model():
    a = create_model(_cfg("wong_mnist", "model.image_size=28"))
    b = create_model(_cfg("wong_mnist", "model.image_size=28", "model.mean=[0.5]", "model.std=[0.25]"))
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(b(x), a((x - 0.5) / 0.25), atol=1e-5)


def test_width_null_is_published_default():
    assert load_config(None, []).model.width is None
    assert count_parameters(create_model(_cfg("digits_cnn"))) == count_parameters(
        create_model(_cfg("digits_cnn", "model.width=16")))  # the old default job, unchanged


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="'model.kwargs.depht'"):
        load_config(None, ["model.name=wide_resnet", "model.kwargs={depht: 16}"])
    with pytest.raises(ConfigError, match="'model.kwargs.width'"):
        load_config(None, ["model.name=mlp", "model.kwargs={width: 3}"])
    with pytest.raises(ConfigError, match="'model.name'"):
        load_config(None, ["model.name=resnet9000"])
    assert {"wong_mnist", "madry_mnist", "trades_smallcnn", "mlp", "preact_resnet18", "wrn_28_10",
            "wrn_34_10"} <= set(available())


def test_model_vs_data_checks():
    with pytest.raises(ConfigError, match="'model.image_size'"):
        check_data(_cfg("wong_mnist", "model.image_size=28"), 8, 1)       # FC sized for 28x28
    with pytest.raises(ConfigError, match="'model.image_size'.*at least 16"):
        check_data(_cfg("trades_smallcnn", "model.image_size=8"), 8, 1)
    with pytest.raises(ConfigError, match="'model.in_channels'"):
        check_data(_cfg("preact_resnet18", "model.in_channels=3"), 32, 1)
    check_data(_cfg("preact_resnet18", "model.in_channels=1"), 8, 1)    # global pooling: any side >= 8
