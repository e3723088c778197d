"""A U-Net for images (Ronneberger et al. 2015, as used by Ho et al. 2020), sized for a CPU by default.

``UNet(x, t, y)`` is a function approximator: [N x C x H x W], timesteps [N] and optional class labels [N] in,
[N x C_out x H x W] out. It knows nothing about diffusion. Any height and width work: inputs are padded to a
multiple of 2^(levels-1) and the output is cropped back, so 28x28 needs no flags.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017): [N] -> [N x dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (Ho et al.'s zero init)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """channel_mult gives the width of each resolution level (the first is full resolution); attention, when
    on, runs at the lowest resolution and in the middle block. ``resample_conv`` puts a 3x3 convolution in each
    down- and upsampling step (Ho et al.'s ``resample_with_conv``); without it the resolution changes by
    average pooling and nearest-neighbour upsampling, which saves most of the compute spent at full resolution."""

    def __init__(self, in_channels: int = 1, out_channels: int | None = None, channels: int = 32,
                 channel_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1, attention: bool = True,
                 dropout: float = 0.0, num_classes: int = 0, resample_conv: bool = True, channels_last: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        self.channels, self.num_classes = channels, num_classes
        self.levels = len(channel_mult)
        emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # one extra class index stands for "no label" (classifier-free guidance, Ho & Salimans 2022)
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)

        self.down = nn.ModuleList()
        widths = [channels]
        ch = channels
        for level, mult in enumerate(channel_mult):
            lowest = level == self.levels - 1
            for _ in range(num_res_blocks):
                blocks = [ResBlock(ch, channels * mult, emb_dim, dropout)]
                ch = channels * mult
                if attention and lowest:
                    blocks.append(SelfAttention(ch))
                self.down.append(nn.ModuleList(blocks))
                widths.append(ch)
            if not lowest:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1) if resample_conv
                                                else nn.AvgPool2d(2)]))
                widths.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout)]
                                 + ([SelfAttention(ch)] if attention else []) + [ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                blocks = [ResBlock(ch + widths.pop(), channels * mult, emb_dim, dropout)]
                ch = channels * mult
                if attention and level == self.levels - 1:
                    blocks.append(SelfAttention(ch))
                if level > 0 and i == num_res_blocks:
                    blocks.append(Upsample(ch, resample_conv))
                self.up.append(nn.ModuleList(blocks))
        self.out = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        # NHWC lets oneDNN (CPU) and cuDNN pick their faster convolution kernels; it changes no value
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N x C x H x W], t: [N] timesteps, y: [N] labels in 0..num_classes (num_classes = no label)."""
        n, _, height, width = x.shape
        assert t.shape == (n,), f"t must have shape ({n},), got {tuple(t.shape)}"
        multiple = 2 ** (self.levels - 1)
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((n,), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(y)
        h = self.stem(x)
        skips = [h]
        for blocks in self.down:
            for block in blocks:
                h = block(h, emb) if isinstance(block, (ResBlock, SelfAttention)) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for blocks in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
        return self.out(h)[:, :, :height, :width]


def upsampling_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The kernel of one stride-2 transposed convolution (padding 1) equal to nearest-neighbour upsampling by 2
    followed by the 3x3 convolution ``weight`` [C_out x C_in x 3 x 3] (padding 1): [C_in x C_out x 4 x 4].

    Along each axis the upsampled image repeats every input twice, so output 2i sees inputs i-1 and i through the
    taps (w0, w1 + w2) and output 2i+1 sees inputs i and i+1 through (w0 + w1, w2) -- the 4 taps
    (w0, w0 + w1, w1 + w2, w2) at stride 2. The same function in 4/9 of the multiplications, without the
    upsampled image in memory (the resize-convolution of Odena et al. 2016 as a sub-pixel convolution)."""
    def fold(w: torch.Tensor, axis: int) -> torch.Tensor:
        w0, w1, w2 = w.unbind(axis)
        return torch.stack([w0, w0 + w1, w1 + w2, w2], axis)

    folded = fold(fold(weight, -2), -1)  # [C_out x C_in x 4 x 4], correlation taps
    return folded.flip(-2, -1).transpose(0, 1)  # a transposed convolution's weight: [C_in x C_out], flipped


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2, then (``with_conv``) a 3x3 convolution -- computed as one transposed
    convolution of the same 3x3 weights (``upsampling_kernel``)."""

    def __init__(self, channels: int, with_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.conv, nn.Identity):
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.conv_transpose2d(x, upsampling_kernel(self.conv.weight), self.conv.bias, stride=2, padding=1)
