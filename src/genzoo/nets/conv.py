from __future__ import annotations

import torch
from torch import nn

from genzoo.errors import ConfigError


def _check_size(height: int, width: int) -> None:
    if height % 4 or width % 4:
        raise ConfigError(f"the conv nets need height and width divisible by 4 (28 and 32 work); got {height}x{width} "
                          f"(choose another --image-size)")


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions and a linear head: [N x C x H x W] -> [N x out_dim]. H, W divisible by 4."""

    def __init__(self, in_channels: int, height: int, width: int, out_dim: int, channels: int = 32, hidden: int = 512):
        super().__init__()
        _check_size(height, width)
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU(),       # H/2
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 4, stride=2, padding=1), nn.SiLU(),  # H/4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * (height // 4) * (width // 4), hidden), nn.SiLU(),
                                  nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvDecoder(nn.Module):
    """The mirror of ConvEncoder: [N x in_dim] -> [N x C x H x W] (unnormalised outputs, e.g. logits)."""

    def __init__(self, in_dim: int, out_channels: int, height: int, width: int, channels: int = 32, hidden: int = 512):
        super().__init__()
        _check_size(height, width)
        c = channels
        self.start_shape = (2 * c, height // 4, width // 4)
        self.head = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 2 * c * (height // 4) * (width // 4)), nn.SiLU())
        self.body = nn.Sequential(
            nn.ConvTranspose2d(2 * c, 2 * c, 4, stride=2, padding=1), nn.SiLU(),  # H/2
            nn.Conv2d(2 * c, c, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.SiLU(),  # H
            nn.Conv2d(c, out_channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).reshape(z.shape[0], *self.start_shape)  # (N, 2c, H/4, W/4)
        return self.body(h)
