"""Small MNIST networks of published robustness results, at their published sizes by default.

`width` is the channels of the first convolution (later layers scale with it); the defaults
give the published architectures at `image_size=28` (parameter counts in tests/models):

- `wong_mnist`: Wong, Rice & Kolter, "Fast is better than free" (ICLR 2020), the MNIST net of
  their code: conv(16, 4x4, s2, p1)-ReLU-conv(32, 4x4, s2, p1)-ReLU-FC(1568, 100)-ReLU-FC(100, 10).
  166,406 parameters.
- `madry_mnist`: Madry et al., "Towards deep learning models resistant to adversarial attacks"
  (ICLR 2018), MNIST challenge model: conv(32, 5x5, same)-ReLU-maxpool2-conv(64, 5x5, same)-ReLU-
  maxpool2-FC(3136, 1024)-ReLU-FC(1024, 10). 3,274,634 parameters.
- `trades_smallcnn`: Zhang et al., "TRADES" (ICML 2019), SmallCNN: conv(32,3)-ReLU-conv(32,3)-ReLU-
  maxpool2-conv(64,3)-ReLU-conv(64,3)-ReLU-maxpool2-FC(1024, 200)-ReLU-dropout(0.5)-FC(200, 200)-
  ReLU-FC(200, 10), valid (unpadded) convolutions. 312,202 parameters.

The fully connected input is computed from `image_size`, so the same nets run on 8x8 digits
(TRADES' valid convolutions need at least 16x16); a checkpoint fits only its own `image_size`.
"""
from __future__ import annotations

from torch import nn

from . import register_model
from .common import ZooModel, conv_out


@register_model("wong_mnist")
class WongMNIST(ZooModel):
    fixed_image_size = True
    min_image_size = 4

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=16, mean=(0.0,), std=(1.0,),
                 hidden: int = 100):
        super().__init__(in_channels, image_size, mean, std)
        s = conv_out(conv_out(image_size, 4, 2, 1), 4, 2, 1)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(2 * width * s * s, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(self.normalize(x)))


@register_model("madry_mnist")
class MadryMNIST(ZooModel):
    fixed_image_size = True
    min_image_size = 4

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=32, mean=(0.0,), std=(1.0,),
                 hidden: int = 1024):
        super().__init__(in_channels, image_size, mean, std)
        s = image_size // 2 // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(2 * width * s * s, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(self.normalize(x)))


@register_model("trades_smallcnn")
class TradesSmallCNN(ZooModel):
    fixed_image_size = True
    min_image_size = 16

    def __init__(self, num_classes=10, in_channels=1, image_size=28, width=32, mean=(0.0,), std=(1.0,),
                 hidden: int = 200, dropout: float = 0.5):
        super().__init__(in_channels, image_size, mean, std)
        s = conv_out(conv_out((image_size - 4) // 2, 3), 3) // 2
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w1, 3), nn.ReLU(), nn.Conv2d(w1, w1, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w1, w2, 3), nn.ReLU(), nn.Conv2d(w2, w2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(w2 * s * s, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.head(self.features(self.normalize(x)))
