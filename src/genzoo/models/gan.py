"""The generative adversarial network (Goodfellow et al. 2014; chapter 14.4, 14.13): an implicit density.

A generator G maps noise z ~ N(0, I) to data; a discriminator D scores data as real or fake. With D(x) =
sigmoid(l(x)) for the discriminator's logit l, the value of the game is

    V(D, G) = E_data[log D(x)] + E_z[log(1 - D(G(z)))],                                       (14.4)

maximised by D*(x) = p_data / (p_data + p_g), where V(D*, G) = -2 log 2 + 2 JSD(p_data || p_g) (14.13;
``theory.optimal_discriminator``, ``theory.gan_value``). The losses, per example, as functions of the logits:

    minimax         D: -log D(x) - log(1 - D(G(z)))     G:  log(1 - D(G(z)))   (the game itself; saturates)
    non-saturating  D: as above                          G: -log D(G(z))        (Goodfellow et al.'s fix; default)
    hinge           D: relu(1 - l(x)) + relu(1 + l(G(z)))  G: -l(G(z))          (Lim & Ye 2017, Miyato et al. 2018)
    wgan-gp         D: l(G(z)) - l(x) + lambda (|grad l(x_hat)| - 1)^2  G: -l(G(z))  (Gulrajani et al. 2017)

Every trainer step updates the discriminator on one real batch; the generator is updated after every
``n_critic`` discriminator steps. The density kind is ``implicit``: a GAN offers samples and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from genzoo import theory
from genzoo.config import option
from genzoo.options import TEMPERATURE
from genzoo.models.base import DensityKind, ImagesOrPoints, Preset
from genzoo.nets import MLP
from genzoo.nets.dcgan import DCGANDiscriminator, DCGANGenerator

LOSSES = ("minimax", "non-saturating", "hinge", "wgan-gp")
PROBABILISTIC = ("minimax", "non-saturating")  # D is a probability, and D(x) = 1/2 at the equilibrium


def discriminator_losses(loss: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-example discriminator loss [N] (without wgan-gp's penalty) from the logits on real and fake data."""
    if loss in PROBABILISTIC:
        return F.softplus(-real_logits) + F.softplus(fake_logits)  # -log sigmoid(l) - log(1 - sigmoid(l'))
    if loss == "hinge":
        return F.relu(1.0 - real_logits) + F.relu(1.0 + fake_logits)
    return fake_logits - real_logits  # wgan-gp


def generator_losses(loss: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-example generator loss [N] from the discriminator's logits on generated data."""
    if loss == "minimax":
        return -F.softplus(fake_logits)  # log(1 - sigmoid(l))
    if loss == "non-saturating":
        return F.softplus(-fake_logits)  # -log sigmoid(l)
    return -fake_logits  # hinge and wgan-gp


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(|grad critic(x_hat)| - 1)^2 per example [N] at x_hat uniformly between real and fake (Gulrajani et al.)."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.dim() - 1), generator=generator, device=real.device,
                     dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0) ** 2


@dataclass
class GANConfig:
    loss: str = option("non-saturating", "adversarial loss", choices=LOSSES)
    latent_dim: int = option(64, "dimension of the noise z", min=1)
    channels: int = option(64, "base channels of the DCGAN nets (images)", min=1)
    hidden: int = option(256, "width of the MLP nets (2-D toy data)", min=1)
    depth: int = option(3, "hidden layers of the MLP nets (2-D toy data)", min=1)
    n_critic: int = option(1, "discriminator steps per generator step (5 is usual for wgan-gp)", min=1)
    gp_weight: float = option(10.0, "weight lambda of wgan-gp's gradient penalty", min=0.0)
    spectral_norm: bool = option(False, "spectral normalisation in the discriminator")


class GAN(ImagesOrPoints):
    family = "gan"
    channels_supported = (1, 3)
    sizes_supported = "height and width divisible by 4"
    kind = DensityKind.IMPLICIT
    Config = GANConfig
    sample_options = (TEMPERATURE,)
    players = ("generator", "discriminator")
    optimizer_options = {"betas": (0.5, 0.999)}  # DCGAN's momentum (Radford et al. 2016); WGAN-GP's in __init__
    train_defaults = {"lr": 2e-4, "epochs": 20}
    final_eval_defaults = {"n": 2500}
    points_defaults = {"train": {"lr": 1e-3, "epochs": 10}}
    presets = {"zoo": Preset(
        "hinge loss, spectral norm in the discriminator and an EMA of the generator with warm-up (Brock et al. "
        "2019), 12 epochs at a constant lr: the recipe of the zoo's GAN",
        "FID 43.8 on 10,000 samples (zoo:gan-mnist; the 5-epoch defaults: 268 on 2,000), 3.9 hours on one thread "
        "(AMD EPYC, AVX2, fp32); BENCHMARKS.md",
        model={"loss": "hinge", "spectral_norm": True}, train={"epochs": 12, "ema_decay": 0.999, "ema_warmup": True})}

    def __init__(self, cfg: GANConfig, image_shape: tuple[int, ...]):
        super().__init__(cfg, image_shape)
        if cfg.loss == "wgan-gp":
            self.optimizer_options = {"betas": (0.0, 0.9)}  # Gulrajani et al. 2017, Algorithm 1: no momentum
        if self.points:
            d = image_shape[0]
            self.generator = MLP(cfg.latent_dim, [cfg.hidden] * cfg.depth, d, activation="relu")
            self.discriminator = MLP(d, [cfg.hidden] * cfg.depth, 1, activation="relu")
        else:
            c, h, w = image_shape
            self.generator = DCGANGenerator(cfg.latent_dim, c, h, w, cfg.channels)
            self.discriminator = DCGANDiscriminator(c, h, w, cfg.channels, cfg.spectral_norm)

    def player_parameters(self, player: str) -> list[torch.nn.Parameter]:
        return list(getattr(self, player).parameters())

    # --- the two players (images in model space [-1, 1], the range of G's tanh) ------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator's logit (or critic score) per example [N], on model-space data."""
        return self.discriminator(x).reshape(x.shape[0])

    def generate(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """G(z) in model space for n draws of z ~ N(0, temperature^2 I)."""
        p = next(self.generator.parameters())
        z = torch.randn((n, self.cfg.latent_dim), generator=generator, device=p.device)
        return self.generator(temperature * z)

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        losses = discriminator_losses(self.cfg.loss, self.logits(real), self.logits(fake))
        if self.cfg.loss == "wgan-gp" and self.cfg.gp_weight > 0:
            losses = losses + self.cfg.gp_weight * gradient_penalty(self.logits, real, fake)
        return losses

    def train_step(self, x, y, step, update, call=None) -> float:
        call = call or self
        real = self.to_model_space(x)
        with torch.no_grad():
            fake = self.generate(real.shape[0])
        value = update("discriminator", call("discriminator_loss", real, fake))
        if (step + 1) % self.cfg.n_critic == 0:
            update("generator", call("generator_loss", real.shape[0]))
        return value

    def generator_loss(self, n: int) -> torch.Tensor:
        """The generator's loss on n fresh fakes, [n]."""
        return generator_losses(self.cfg.loss, self.logits(self.generate(n)))

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The discriminator's loss on x against as many fresh fakes, [N]."""
        real = self.to_model_space(x)
        return self.discriminator_loss(real, self.generate(real.shape[0]).detach())

    # --- diagnostics -----------------------------------------------------------------------------------
    def validation_metrics(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        real = self.to_model_space(x)
        fake = self.generate(real.shape[0])
        real_logits, fake_logits = self.logits(real), self.logits(fake)
        out = {"g_loss": generator_losses(self.cfg.loss, fake_logits),
               "d_loss": discriminator_losses(self.cfg.loss, real_logits, fake_logits)}
        if self.cfg.loss in PROBABILISTIC:
            out.update(d_real=torch.sigmoid(real_logits), d_fake=torch.sigmoid(fake_logits))
        else:
            out.update(critic_real=real_logits, critic_fake=fake_logits)
        # spread: the distance from each example to its neighbour in the batch; a collapsed G spreads little
        out["real_spread"] = (real - real.roll(1, 0)).flatten(1).norm(dim=1)
        out["fake_spread"] = (fake - fake.roll(1, 0)).flatten(1).norm(dim=1)
        return out

    def diagnose(self, row: dict) -> list[str]:
        warnings = []
        if row.get("val_d_real", 0.5) > 0.95 and row.get("val_d_fake", 0.5) < 0.05:
            warnings.append(f"the discriminator wins outright (D(x) = {row['val_d_real']:.3f}, D(G(z)) = "
                            f"{row['val_d_fake']:.3f}; both tend to 1/2 at the equilibrium): the generator learns "
                            f"little; try --loss non-saturating or hinge, or a lower --lr.")
        ratio = row.get("val_fake_spread", 1.0) / max(row.get("val_real_spread", 1.0), 1e-12)
        if ratio < 0.25:
            warnings.append(f"the generator's samples lose diversity (spread {100 * ratio:.0f}% of the data's): "
                            f"mode collapse.")
        critic = max(abs(row.get("val_critic_real", 0.0)), abs(row.get("val_critic_fake", 0.0)))
        if critic > 1e4:
            warnings.append(f"the critic's scores reach {critic:.3g}: training is diverging; lower --lr or raise "
                            f"--gp-weight.")
        return warnings

    # --- samples ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               progress: bool = False) -> torch.Tensor:
        """n samples: images [n x C x H x W] in [0, 1], or points [n x 2]. ``temperature`` scales z (below 1
        trades diversity for fidelity, the truncation trick in its simplest form)."""
        self.check_sample_options(temperature=temperature)
        return self.to_data(self.generate(n, generator, temperature))

    @torch.no_grad()
    def interpolate(self, n: int, steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n spherical paths in z between random pairs, decoded: [n x steps x C x H x W] in [0, 1]."""
        p = next(self.generator.parameters())
        z = torch.randn((2, n, self.cfg.latent_dim), generator=generator, device=p.device)
        path = theory.slerp(z[0], z[1], torch.linspace(0, 1, steps, device=p.device))  # (n, steps, L)
        images = self.to_data(self.generator(path.reshape(n * steps, -1)))
        return images.reshape(n, steps, *self.image_shape)

    @torch.no_grad()
    def pictures(self, x: torch.Tensor, generator: torch.Generator, quick: bool = False) -> dict[str, torch.Tensor]:
        if self.points:
            return {"samples": self.density_pictures(x, x, self.sample(5000, generator))}  # test points, samples
        return {"samples": self.sample(100, generator).reshape(10, 10, *self.image_shape),
                "interp": self.interpolate(8, 10, generator)}
