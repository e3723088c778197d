"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017): an exact likelihood by the change of variables (14.1, 14.17).

A bijection f maps an image to z of the same dimension, and

    log p(x) = log p_Z(f(x)) + log |det df/dx|.

f is a stack of affine couplings. Each keeps a part x_a of its input and moves the rest,

    y_a = x_a,    y_b = x_b * exp(s(x_a)) + t(x_a),                                        (14.17)

so its Jacobian is triangular and log |det J| = sum_i s_i(x_a): one pass, no determinant. The part kept is
chosen by a checkerboard mask or by splitting the channels; s is bounded as scale * tanh(.) for stability;
s and t come from one residual conv net (``nets.resnet``). The multi-scale architecture alternates
3 checkerboard couplings, a squeeze (C x H x W -> 4C x H/2 x W/2), 3 channel couplings, and factors out half of
the channels as final latents at each scale; the last scale has 4 checkerboard couplings.

The data are 8-bit. They are dequantised, x' = (x + u) / 256 with u ~ U[0, 1)^D, and mapped to the real line
by the logit of alpha + (1 - 2 alpha) x'. Both steps enter the log-determinant, so

    log P(x) >= E_u[log p(x')] - D log 256                                 (Theis et al. 2016)

and ``log_prob`` returns a one-sample estimate of that bound: the reported bits per dimension are an upper bound
on the true bits per dimension of the discrete data, as in every published flow table. With
``--dequantisation variational`` u is drawn from a learned q(u | x) in (0, 1)^D instead (Ho et al. 2019), and

    log P(x) >= E_q[log p(x') - log q(u | x)] - D log 256,

tight when q(u | x) is p's own density inside x's bin: the flow need not be flat across each bin to score well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genzoo import theory
from genzoo.config import option
from genzoo.data.views import dequantize
from genzoo.errors import ConfigError
from genzoo.options import TEMPERATURE
from genzoo.models.base import DensityKind, GenerativeModel, Preset
from genzoo.nets.resnet import ResNet


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """Each 2 x 2 spatial block becomes 4 channels: [N x C x H x W] -> [N x 4C x H/2 x W/2]."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``squeeze``."""
    n, c, h, w = x.shape
    x = x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // 4, 2 * h, 2 * w)


def checkerboard(height: int, width: int, parity: int, device=None) -> torch.Tensor:
    """[1 x 1 x H x W] mask, 1 on the pixels (i + j) % 2 == parity: the part a coupling keeps."""
    i = torch.arange(height, device=device)[:, None]
    j = torch.arange(width, device=device)[None, :]
    return ((i + j) % 2 == parity).float()[None, None]


class ActNorm(nn.Module):
    """Activation normalisation (Kingma & Dhariwal 2018, section 3.1): y = (x + b) * exp(log_s) per channel, with
    log |det J| = H * W * sum(log_s). b and log_s are set from the first training batch so that its activations
    have zero mean and unit variance per channel (data-dependent initialisation), then trained as parameters.

    Whether that initialisation has happened is the buffer ``initialized``, saved with the weights: a model loaded
    from a run keeps its trained b and log_s instead of re-initialising them on its next batch. Under
    torch.distributed the first batch's statistics are averaged over the ranks, so every rank starts the same."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        moments = torch.stack([x.mean(dim=(0, 2, 3)), (x * x).mean(dim=(0, 2, 3))]).to(self.bias.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(moments)
            moments /= torch.distributed.get_world_size()
        mean, square = moments
        std = (square - mean * mean).clamp_min(0).sqrt()
        self.bias.copy_(-mean.reshape(self.bias.shape))
        self.log_scale.copy_(-torch.log(std + 1e-6).reshape(self.log_scale.shape))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialized:
            self.initialize(x)
        y = (x + self.bias.to(x.dtype)) * torch.exp(self.log_scale.to(x.dtype))
        log_det = x.shape[2] * x.shape[3] * self.log_scale.to(x.dtype).sum()
        return y, log_det.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale.to(y.dtype)) - self.bias.to(y.dtype)


class AffineCoupling(nn.Module):
    """One affine coupling on [N x C x H x W]: ``forward(x) -> (y, log_det [N])``, ``inverse(y) -> x``. With
    ``context`` channels, s and t also see a context of the same height and width (a conditional coupling: the
    Jacobian is still triangular in x, whatever the context)."""

    def __init__(self, channels: int, mask: str, parity: int, hidden: int, blocks: int, context: int = 0):
        super().__init__()
        if mask not in ("checkerboard", "channel"):
            raise ValueError(f"mask must be 'checkerboard' or 'channel', got {mask!r}")
        self.mask, self.parity = mask, parity
        if mask == "checkerboard":
            cin, cout = channels + 1, channels  # the masked input and the mask itself
        else:
            cin = cout = channels // 2
        cin += context
        self.net = ResNet(cin, 2 * cout, hidden, blocks)  # zero output: the coupling starts as the identity
        self.scale = nn.Parameter(torch.ones(1, cout, 1, 1))

    def _s_t(self, x_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The coupling's arithmetic stays in the input's precision even when the net runs in bf16 (autocast):
        # log-determinants are sums over hundreds of terms.
        raw_s, t = self.net(x_a).to(x_a.dtype).chunk(2, dim=1)
        return self.scale * torch.tanh(raw_s), t  # s bounded in (-scale, scale)

    def _couple(self, x: torch.Tensor, step, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``step(moved, s, t)`` to the moved part of x, with s and t computed from its kept part (the
        same in x and y, which is what makes the coupling invertible) and the context; returns the result and s."""
        extra = [] if context is None else [context.to(x.dtype)]
        if self.mask == "checkerboard":
            b = checkerboard(x.shape[2], x.shape[3], self.parity, x.device).to(x.dtype)
            s, t = self._s_t(torch.cat([x * b, b.expand(x.shape[0], 1, -1, -1), *extra], dim=1))
            s, t = s * (1 - b), t * (1 - b)  # zero on the kept pixels, so step leaves them unchanged
            return step(x, s, t), s
        kept, moved = x.chunk(2, dim=1)
        if self.parity:
            kept, moved = moved, kept
        s, t = self._s_t(torch.cat([kept, *extra], dim=1))
        moved = step(moved, s, t)
        return torch.cat([moved, kept] if self.parity else [kept, moved], dim=1), s

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y, s = self._couple(x, lambda x_b, s, t: x_b * torch.exp(s) + t, context)
        return y, theory.sum_except_batch(s)

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self._couple(y, lambda y_b, s, t: (y_b - t) * torch.exp(-s), context)[0]


class MultiScaleFlow(nn.Module):
    """The multi-scale bijection of RealNVP on [N x C x H x W]: ``forward(x) -> (z [N x D], log_det [N])``."""

    def __init__(self, image_shape: tuple[int, int, int], scales: int, hidden: int, blocks: int,
                 actnorm: bool = False):
        super().__init__()
        c, h, w = image_shape
        if scales < 1:
            raise ValueError("a multi-scale flow needs at least one scale")
        if h % 2 ** (scales - 1) or w % 2 ** (scales - 1):
            raise ConfigError(f"{scales} scales squeeze {scales - 1} times, so the image height and width must be "
                              f"divisible by {2 ** (scales - 1)}; got {h}x{w} (use fewer --scales).")
        self.levels = nn.ModuleList()
        self.out_shapes: list[tuple[int, int, int]] = []  # the shape of each part of z, in order
        for _ in range(scales - 1):
            level = nn.ModuleDict({
                "checker": nn.ModuleList(AffineCoupling(c, "checkerboard", p % 2, hidden, blocks) for p in range(3)),
                "channel": nn.ModuleList(AffineCoupling(4 * c, "channel", p % 2, hidden, blocks) for p in range(3)),
            })
            if actnorm:  # one before each coupling (Glow's step of flow, without the 1x1 convolution)
                level["checker_norm"] = nn.ModuleList(ActNorm(c) for _ in range(3))
                level["channel_norm"] = nn.ModuleList(ActNorm(4 * c) for _ in range(3))
            self.levels.append(level)
            c, h, w = 2 * c, h // 2, w // 2  # after the squeeze (4c) half the channels are factored out
            self.out_shapes.append((c, h, w))
        self.final = nn.ModuleList(AffineCoupling(c, "checkerboard", p % 2, hidden, blocks) for p in range(4))
        self.final_norm = nn.ModuleList(ActNorm(c) for _ in range(4)) if actnorm else None
        self.out_shapes.append((c, h, w))

    @staticmethod
    def _steps(couplings: nn.ModuleList, norms: nn.ModuleList | None) -> list[tuple]:
        """(actnorm or None, coupling) in the order of the forward pass."""
        return list(zip(norms if norms is not None else [None] * len(couplings), couplings))

    def _level_steps(self, level: nn.ModuleDict, part: str) -> list[tuple]:
        return self._steps(level[part], level[f"{part}_norm"] if f"{part}_norm" in level else None)

    @staticmethod
    def _forward_steps(steps, x, log_det):
        for norm, coupling in steps:
            if norm is not None:
                x, ld = norm(x)
                log_det = log_det + ld
            x, ld = coupling(x)
            log_det = log_det + ld
        return x, log_det

    @staticmethod
    def _inverse_steps(steps, x):
        for norm, coupling in reversed(steps):
            x = coupling.inverse(x)
            if norm is not None:
                x = norm.inverse(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        zs = []
        for level in self.levels:
            x, log_det = self._forward_steps(self._level_steps(level, "checker"), x, log_det)
            x = squeeze(x)
            x, log_det = self._forward_steps(self._level_steps(level, "channel"), x, log_det)
            z, x = x.chunk(2, dim=1)  # factor out half the dimensions (Dinh et al. 2017, section 3.6)
            zs.append(z.flatten(1))
        x, log_det = self._forward_steps(self._steps(self.final, self.final_norm), x, log_det)
        zs.append(x.flatten(1))
        return torch.cat(zs, dim=1), log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        parts = list(z.split([math.prod(s) for s in self.out_shapes], dim=1))
        x = self._inverse_steps(self._steps(self.final, self.final_norm), parts.pop().reshape(-1, *self.out_shapes[-1]))
        for level, shape in zip(reversed(self.levels), reversed(self.out_shapes[:-1])):
            x = torch.cat([parts.pop().reshape(-1, *shape), x], dim=1)
            x = self._inverse_steps(self._level_steps(level, "channel"), x)
            x = unsqueeze(x)
            x = self._inverse_steps(self._level_steps(level, "checker"), x)
        return x


def logit_transform(x: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x in (0, 1) -> y = logit(alpha + (1 - 2 alpha) x) and log |dy/dx| summed per example [N]."""
    p = alpha + (1 - 2 * alpha) * x
    y = torch.log(p) - torch.log1p(-p)
    log_det = math.log(1 - 2 * alpha) * x[0].numel() - theory.sum_except_batch(torch.log(p) + torch.log1p(-p))
    return y, log_det


def inverse_logit_transform(y: torch.Tensor, alpha: float) -> torch.Tensor:
    return (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)


def logistic_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Elementwise log density of the standard logistic distribution."""
    return -F.softplus(z) - F.softplus(-z)


class VariationalDequantizer(nn.Module):
    """q(u | x) of variational dequantisation (Ho et al. 2019, Flow++ section 3.1), for 8-bit x [N x C x H x W]:

        u = sigmoid(g(eps; x)),   eps ~ N(0, I),

    g a stack of checkerboard affine couplings whose scale and shift also see features of x (a conditional flow),
    so u is in (0, 1)^D and

        log q(u | x) = log N(eps) - log |det dg/deps| - sum log sigmoid'(g).

    ``forward(x) -> (u, log q(u | x) [N])``. A fresh dequantiser is the logit-normal sigmoid(eps)."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, couplings: int, blocks: int = 1):
        super().__init__()
        c = image_shape[0]
        self.features = ResNet(c, hidden, hidden, blocks, zero_out=False)
        self.couplings = nn.ModuleList(AffineCoupling(c, "checkerboard", p % 2, hidden, blocks, context=hidden)
                                       for p in range(couplings))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        context = self.features(x / 127.5 - 1.0)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        y, log_q = eps, theory.sum_except_batch(theory.standard_normal_log_prob(eps))
        for coupling in self.couplings:
            y, log_det = coupling(y, context)
            log_q = log_q - log_det
        # -log sigmoid'(y) = softplus(-y) + softplus(y)
        return torch.sigmoid(y), log_q + theory.sum_except_batch(F.softplus(-y) + F.softplus(y))


@dataclass
class RealNVPConfig:
    scales: int = option(3, "scales of the multi-scale architecture (each but the last squeezes once)", min=1)
    hidden: int = option(64, "channels of the coupling networks", min=1)
    blocks: int = option(2, "residual blocks per coupling network", min=1)
    alpha: float = option(0.05, "the logit transform's alpha: logit(alpha + (1 - 2 alpha) x)", min=0.0, lt=0.5)
    prior: str = option("gaussian", "base distribution of z", choices=("gaussian", "logistic"))
    actnorm: bool = option(False, "activation normalisation with data-dependent initialisation before each coupling "
                                  "(Kingma & Dhariwal 2018)")
    dequantisation: str = option("uniform", "how the 8-bit data are made continuous: x + u with u uniform, or u drawn "
                                            "from a learned q(u | x) (variational, Ho et al. 2019: a tighter bound)",
                                 choices=("uniform", "variational"))
    deq_hidden: int = option(32, "channels of the variational dequantiser's networks", min=1)
    deq_couplings: int = option(4, "couplings of the variational dequantiser", min=1)


class RealNVP(GenerativeModel):
    family = "realnvp"
    channels_supported = (1, 3)
    sizes_supported = "height and width divisible by 2^(scales - 1) (4 by default)"
    kind = DensityKind.EXACT
    view = "uint8"
    Config = RealNVPConfig
    sample_options = (TEMPERATURE,)
    train_defaults = {"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 200, "grad_clip": 100.0}
    presets = {"hour": Preset(
        "32-channel coupling nets for 8 epochs (cosine)",
        "test 1.570 bits/dim on all 10,000 test images, 60 min on one thread (Xeon with AMX, bf16); BENCHMARKS.md",
        model={"hidden": 32}, train={"epochs": 8}),
        "zoo": Preset(
            "64-channel coupling nets, ActNorm and variational dequantisation for 12 epochs (cosine): the zoo's "
            "realnvp-mnist",
            "test 1.180 bits/dim on all 10,000 test images (1.168 with --dequant-draws 8), FID 139 on 10,000 "
            "samples; 6.8 min on one NVIDIA H200 (bf16); on a CPU about 7 hours of one thread (35 min an epoch, "
            "AMD EPYC with AVX-512-BF16, bf16, compiled); BENCHMARKS.md",
            model={"hidden": 64, "actnorm": True, "dequantisation": "variational"}, train={"epochs": 12}),
        "zoo-small": Preset(
            "32-channel coupling nets with ActNorm for 12 epochs (cosine): the zoo's recipe before session 19",
            "test 1.393 bits/dim on all 10,000 test images, FID 193.0 on 10,000 samples, 5.1 h of one shared thread "
            "(AMD EPYC, AVX2); BENCHMARKS.md",
            model={"hidden": 32, "actnorm": True}, train={"epochs": 12})}

    def __init__(self, cfg: RealNVPConfig, image_shape: tuple[int, int, int]):
        super().__init__(cfg, image_shape)
        self.flow = MultiScaleFlow(image_shape, cfg.scales, cfg.hidden, cfg.blocks, cfg.actnorm)
        self.dequantizer = (VariationalDequantizer(image_shape, cfg.deq_hidden, cfg.deq_couplings)
                            if cfg.dequantisation == "variational" else None)

    @property
    def nll_estimator(self) -> str:
        return (f"{self.cfg.dequantisation} dequantisation, {{draws}} draw(s) per image (importance-weighted when "
                f"more than one): an upper bound on the NLL of the 8-bit data")

    def likelihood_options(self, cfg) -> dict:
        return {"draws": cfg.dequant_draws}

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if self.cfg.prior == "gaussian":
            return theory.standard_normal_log_prob(z).sum(1)
        return logistic_log_prob(z).sum(1)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """The exact continuous log-density of x' in (0, 1)^D [N x C x H x W], in nats: [N]."""
        y, log_det_logit = logit_transform(x, self.cfg.alpha)
        z, log_det_flow = self.flow(y)
        return self.prior_log_prob(z) + log_det_flow + log_det_logit

    def log_prob(self, x: torch.Tensor, generator: torch.Generator | None = None, draws: int = 1) -> torch.Tensor:
        """log P(x) of 8-bit images (values 0..255) [N x C x H x W], in nats, through one dequantisation draw:
        an unbiased estimate of the lower bound E_u[log p((x + u)/256) - log q(u | x)] - D log 256 (see the module
        doc), where q is uniform (log q = 0) or the variational dequantiser. With ``draws`` = K > 1, the
        importance-weighted bound log (1/K) sum_k p((x + u_k)/256) / q(u_k | x) - D log 256 (Burda et al. 2016's
        argument, Ho et al. 2019's evaluation): a lower bound on log P(x) for every K, tighter as K grows."""
        if draws > 1:
            one = torch.stack([self.log_prob(x, generator) for _ in range(draws)])
            return torch.logsumexp(one, dim=0) - math.log(draws)
        self.check_discrete(x, 256, "RealNVP")
        log_256 = x[0].numel() * math.log(256.0)
        if self.dequantizer is None:
            return self.log_density(dequantize(x, generator)) - log_256
        u, log_q = self.dequantizer(x, generator)
        return self.log_density((x + u) / 256.0) - log_q - log_256

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return -self.log_prob(x)

    def validation_metrics(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        nll = -self.log_prob(x)
        return {"nll": nll, "bits_per_dim": theory.nats_to_bits_per_dim(nll, x[0].numel())}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               progress: bool = False) -> torch.Tensor:
        """n images [n x C x H x W] in [0, 1] by the inverse pass from z drawn at ``temperature`` (the prior's
        scale; below 1 trades diversity for cleaner samples, Kingma & Dhariwal 2018)."""
        self.check_sample_options(temperature=temperature)
        p = next(self.parameters())
        d = math.prod(self.image_shape)
        if self.cfg.prior == "gaussian":
            z = torch.randn((n, d), generator=generator, device=p.device, dtype=p.dtype)
        else:
            u = torch.rand((n, d), generator=generator, device=p.device, dtype=p.dtype).clamp(1e-7, 1 - 1e-7)
            z = torch.log(u) - torch.log1p(-u)
        x = inverse_logit_transform(self.flow.inverse(temperature * z), self.cfg.alpha)
        return x.clamp(0.0, 1.0)

    @torch.no_grad()
    def pictures(self, x: torch.Tensor, generator: torch.Generator, quick: bool = False) -> dict[str, torch.Tensor]:
        samples = self.sample(100, generator).reshape(10, 10, *self.image_shape)
        cooled = torch.stack([self.sample(10, generator, temperature=t) for t in (1.0, 0.9, 0.8, 0.7, 0.5)])
        return {"samples": samples, "temperatures": cooled}
