"""Small plain-PyTorch classifiers for digits / MNIST-size images."""
from __future__ import annotations

from torch import nn

from . import register_model
from .common import Normalize, ZooModel  # noqa: F401  (Normalize re-exported for old imports)
from .dropblock import DropBlock2d


class DigitsCNN(ZooModel):
    """Two 3x3 conv blocks (conv-BN-ReLU) + max-pool + a linear head.

    Sized for 8x8 digits and 28x28 MNIST alike (adaptive pooling before the head).
    """

    min_image_size = 2

    @staticmethod
    def check_kwargs(kw):
        """DropBlock options (load-time checks; ConfigError names the key)."""
        from ..errors import ConfigError
        p, size = kw.get("dropblock_prob", 0.0), kw.get("dropblock_size", 3)
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ConfigError(f"key 'model.kwargs.dropblock_prob': must be in [0, 1), got {p}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"key 'model.kwargs.dropblock_size': must be an integer >= 1, got {size}")

    def __init__(self, num_classes=10, in_channels=1, image_size=8, width=16, mean=(0.0,), std=(1.0,),
                 batchnorm: bool = True, hidden: int = 128, dropblock_prob: float = 0.0, dropblock_size: int = 3):
        super().__init__(in_channels, image_size, mean, std)
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), norm(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), norm(2 * width), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        if dropblock_prob > 0:  # after the last conv block (Ghiasi et al. 2018); parameter names unchanged
            self.features.insert(6, DropBlock2d(dropblock_prob, dropblock_size))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(self.normalize(x)))


class MLP(ZooModel):
    """Flatten, `depth` hidden layers of `width` units with ReLU, a linear head (sized for `image_size`)."""

    fixed_image_size = True

    def __init__(self, num_classes=10, in_channels=1, image_size=8, width=16, mean=(0.0,), std=(1.0,),
                 depth: int = 2):
        super().__init__(in_channels, image_size, mean, std)
        layers, d = [nn.Flatten()], in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(self.normalize(x))


class WideMLP(MLP):
    """An MLP of ~20M parameters (for ZeRO memory measurements): width 4096, depth 2 by default."""

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=4096, mean=(0.0,), std=(1.0,),
                 depth: int = 2):
        super().__init__(num_classes, in_channels, image_size, width, mean, std, depth)


register_model("digits_cnn")(DigitsCNN)
register_model("mlp")(MLP)
register_model("wide_mlp")(WideMLP)
