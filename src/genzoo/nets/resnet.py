"""A small residual conv net that keeps the spatial size: [N x C_in x H x W] -> [N x C_out x H x W].

Used by RealNVP for the scale and shift of its coupling layers, but it knows nothing of flows. With
``zero_out`` the last convolution starts at zero, so a fresh net outputs zeros (a coupling starts as the identity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, channels: int = 64, blocks: int = 2,
                 zero_out: bool = True, channels_last: bool = True):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        if zero_out:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)
        self.channels_last = channels_last  # the faster memory layout for convolutions on CPUs
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.conv_out(F.relu(self.blocks(self.conv_in(x))))
