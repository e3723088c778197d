"""DCGAN-style generator and discriminator (Radford et al. 2016) for small images (H and W divisible by 4).

The generator maps z [N x L] to [N x C x H x W] in [-1, 1] through a linear layer to (2c, H/4, W/4) and two
stride-2 transposed convolutions, with batch norm and ReLU; the discriminator mirrors it with two stride-2
convolutions and leaky ReLU, without batch norm (so a gradient penalty per example is well defined), and outputs
one unnormalised score per image. Optional spectral normalisation (Miyato et al. 2018) bounds the
discriminator's Lipschitz constant. Neither knows what loss it is trained with.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

from genzoo.errors import ConfigError


def _check_size(height: int, width: int) -> None:
    if height % 4 or width % 4:
        raise ConfigError(f"the DCGAN nets need height and width divisible by 4 (28 and 32 work); got {height}x{width} "
                          f"(choose another --image-size)")


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, out_channels: int, height: int, width: int, channels: int = 64):
        super().__init__()
        _check_size(height, width)
        c = channels
        self.start = (4 * c, height // 4, width // 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, 4 * c * (height // 4) * (width // 4), bias=False),
                                     nn.BatchNorm1d(4 * c * (height // 4) * (width // 4)), nn.ReLU())
        self.body = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, out_channels, 3, padding=1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).reshape(z.shape[0], *self.start))  # (N, C, H, W)


class DCGANDiscriminator(nn.Module):
    def __init__(self, in_channels: int, height: int, width: int, channels: int = 64, spectral_norm: bool = False):
        super().__init__()
        _check_size(height, width)
        c = channels
        sn = _sn if spectral_norm else (lambda m: m)
        self.features = nn.Sequential(
            sn(nn.Conv2d(in_channels, c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # H/2
            sn(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # H/4
            sn(nn.Conv2d(2 * c, 4 * c, 3, padding=1)), nn.LeakyReLU(0.2),
        )
        self.head = sn(nn.Linear(4 * c * (height // 4) * (width // 4), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)  # (N,)
