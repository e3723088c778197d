"""The families, one file each. ``FAMILIES`` is the explicit registry the CLI and ``load_run`` use."""

from genzoo.errors import ConfigError
from genzoo.models.base import DensityKind, GenerativeModel
from genzoo.models.ddpm import DDPM, DDPMConfig
from genzoo.models.ebm import EBM, EBMConfig
from genzoo.models.flow import Flow, FlowConfig
from genzoo.models.gan import GAN, GANConfig
from genzoo.models.pixelcnn import PixelCNN, PixelCNNConfig
from genzoo.models.realnvp import RealNVP, RealNVPConfig
from genzoo.models.vae import VAE, VAEConfig

FAMILIES: dict[str, type[GenerativeModel]] = {
    "vae": VAE,
    "ddpm": DDPM,
    "flow": Flow,
    "pixelcnn": PixelCNN,
    "realnvp": RealNVP,
    "gan": GAN,
    "ebm": EBM,
}


def get_family(name: str) -> type[GenerativeModel]:
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family '{name}'; choose one of: {', '.join(FAMILIES)}.")
    return FAMILIES[name]


__all__ = ["DensityKind", "GenerativeModel", "FAMILIES", "get_family", "VAE", "VAEConfig", "DDPM", "DDPMConfig", "PixelCNN",
           "PixelCNNConfig", "RealNVP", "RealNVPConfig",
           "GAN", "GANConfig", "EBM", "EBMConfig", "Flow", "FlowConfig"]
