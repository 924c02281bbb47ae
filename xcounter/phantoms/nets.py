"""Small networks for the phantom world: a torchxrayvision-style DenseNet classifier and the
multi-head attribute oracle. Both are TorchScript-able and train in minutes on one CPU thread."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import DenseNet


def phantom_densenet(num_classes: int, in_channels: int, *, growth_rate: int = 12,
                     block_config: tuple[int, ...] = (3, 3, 3), num_init_features: int = 24,
                     bn_size: int = 2, seed: int = 0) -> DenseNet:
    """A torchvision DenseNet (the architecture torchxrayvision uses) shrunk for 64 px phantoms.

    The stem is a 5x5 stride-2 convolution (finer than the stock 7x7, so a 1-2 pixel chest tube or
    ruler at 64 px is still resolved) followed by the usual max-pool, which keeps thin bright lines;
    the dense blocks then run at 16, 8 and 4 px, cheap enough for one shared CPU thread.
    """
    torch.manual_seed(seed)
    net = DenseNet(growth_rate=growth_rate, block_config=block_config,
                   num_init_features=num_init_features, bn_size=bn_size, num_classes=num_classes)
    net.features.conv0 = nn.Conv2d(in_channels, num_init_features, kernel_size=5, stride=2,
                                   padding=2, bias=False)
    nn.init.kaiming_normal_(net.features.conv0.weight)
    return net


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OracleNet(nn.Module):
    """Shared conv trunk + one linear output per attribute (the heads).

    Average AND max pooling feed the heads: averages carry global properties (exposure, body
    width), maxima carry small local objects (a laterality marker, a nodule, a ruler).
    Input: [B, C, size, size] in [0, 1]; output: [B, A] logits (sigmoid gives the measurement).
    """

    def __init__(self, in_channels: int, num_attributes: int, width: int = 24) -> None:
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            _conv(in_channels, w, 2),                            # 64 -> 32
            _conv(w, 2 * w, 2), _conv(2 * w, 2 * w, 1),          # 32 -> 16
            _conv(2 * w, 3 * w, 2), _conv(3 * w, 3 * w, 1),      # 16 -> 8
            _conv(3 * w, 4 * w, 2),                              # 8 -> 4
        )
        self.heads = nn.Linear(8 * w, num_attributes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.trunk((x - 0.5) * 4.0)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.heads(pooled)
