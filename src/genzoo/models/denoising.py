"""What the two families built on the U-Net share (DDPM and flow matching): the network's settings (with the
class labels of ``models.labels``), the guided model function (Ho & Salimans 2022), the data's [-1, 1] space and
its dequantisation, and the path between two images through their noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genzoo import theory
from genzoo.config import option
from genzoo.data.views import dequantize
from genzoo.models.labels import LabelConfig, classifier_free, unconditional_then
from genzoo.nets.unet import UNet

def _check_channel_mult(value: str) -> str | None:
    try:
        mult = [int(v) for v in value.split(",")]
    except ValueError:
        return "must be comma-separated integers such as 1,2,2"
    if not mult or min(mult) < 1 or len(mult) > 5:
        return "must list 1 to 5 positive integers"
    return None


@dataclass
class DenoiserConfig(LabelConfig):
    # The default U-Net is narrow at full resolution and wide at 7x7, where compute is cheap, with widths that are
    # multiples of 16 (vector lanes): 1.11M parameters, faster to train than the usual 32/(1,2,2) layout of the
    # same size on a CPU (measured in BENCHMARKS.md).
    channels: int = option(16, "U-Net base width", min=4)
    channel_mult: str = option("1,3,5", "U-Net width multiplier per resolution level", check=_check_channel_mult)
    res_blocks: int = option(1, "residual blocks per U-Net level", min=1)
    attention: bool = option(True, "self-attention at the lowest resolution")
    resample_conv: bool = option(True, "a 3x3 convolution in each down- and upsampling step")
    dropout: float = option(0.0, "dropout in the residual blocks", min=0.0, lt=1.0)


def build_unet(cfg: DenoiserConfig, image_shape: tuple[int, int, int]) -> UNet:
    return UNet(in_channels=image_shape[0], channels=cfg.channels,
                channel_mult=tuple(int(v) for v in cfg.channel_mult.split(",")), num_res_blocks=cfg.res_blocks,
                attention=cfg.attention, dropout=cfg.dropout, num_classes=cfg.num_classes if cfg.class_cond else 0,
                resample_conv=cfg.resample_conv)


def guided(net, y: torch.Tensor | None, guidance: float, time_scale: float = 1.0):
    """The network as a function of (x_t, t); with labels and guidance w, the classifier-free combination
    (1 - w) * output(no label) + w * output(label) (w = 1 is plain conditioning, w = 0 unconditional).
    ``time_scale`` multiplies t before the network's time embedding."""
    def scaled(t):  # (integer DDPM timesteps pass through unchanged)
        return t if time_scale == 1.0 else t * time_scale

    if y is None or guidance == 1.0:
        return lambda xt, t: net(xt, scaled(t), y)

    def fn(xt, t):
        both = net(torch.cat([xt, xt]), scaled(torch.cat([t, t])), unconditional_then(y, net.num_classes))
        uncond, cond = both.chunk(2)
        return classifier_free(uncond, cond, guidance)
    return fn


def to_model_space(x: torch.Tensor) -> torch.Tensor:
    """uint8-view values 0..255 -> [-1, 1], the data range of both families (Ho et al.)."""
    return x / 127.5 - 1.0


def to_image(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] for pictures."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def dequantised_model_space(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8-view values 0..255 -> 2 x' - 1 in [-1, 1) with x' = (x + u) / 256, u ~ U[0, 1): the continuous data
    whose density the dequantisation bound evaluates (and a flow trained with --dequantise sees)."""
    return 2.0 * dequantize(x, generator) - 1.0


def dequantised_log_prob(log_p, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A one-draw estimate of the bound on log P(x) of 8-bit images x [N x C x H x W] given a continuous density
    log_p on [-1, 1]-scaled data: with x' = (x + u) / 256 mapped to 2 x' - 1,
        log P(x) >= E_u[log p(2 x' - 1)] + D log 2 - D log 256                 (Theis et al. 2016)."""
    d = x[0].numel()
    return log_p(dequantised_model_space(x, generator)) + d * math.log(2.0) - d * math.log(256.0)


def noise_path(z1: torch.Tensor, z2: torch.Tensor, frames: int) -> torch.Tensor:
    """Spherical interpolation between the noises z1, z2 [N x C x H x W] of two images, the path of the DDIM paper's
    interpolations (Song et al. 2021, section 5.3): Gaussian noise lives near a sphere, which a straight line
    would leave. Returns [N * frames x C x H x W], each image's frames in a row."""
    if frames < 2:
        raise ValueError(f"frames must be at least 2, got {frames}")
    t = torch.linspace(0.0, 1.0, frames, device=z1.device)
    return theory.slerp(z1.flatten(1), z2.flatten(1), t).reshape(-1, *z1.shape[1:])
