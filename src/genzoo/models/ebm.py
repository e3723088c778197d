"""The energy-based model (chapter 14.1): explicit but unnormalised, p(x) = exp(-E(x)) / Z.

E is a network; Z = integral of exp(-E) is unknown, so the density kind is ``unnormalised``: ``energy(x)`` is
available, ``log_prob`` is not. The log-likelihood gradient is

    grad log p(x) = -grad E(x) + E_{x- ~ p}[grad E(x-)],

and training follows it by contrastive divergence: the loss per example is E(x+) - E(x-) (plus a penalty
alpha (E(x+)^2 + E(x-)^2) that keeps energies near zero), with x- drawn by stochastic-gradient Langevin
dynamics (SGLD),

    x_{k+1} = x_k - step_size * grad_x E(x_k) + noise * N(0, I),

from a replay buffer of past chains (Du & Mordatch 2019): each chain restarts from uniform noise with
probability ``reinit`` and otherwise continues a stored one, so a few SGLD steps per training step add up to long
chains. The buffer is part of the model's state (saved with the weights), which also makes resuming exact.

The restart rate decides where the energy is corrected: at 5 % a chain lives ~20 visits, so the negatives are mostly
old chains and seldom the first few hundred steps from noise that ``sample`` takes; the zoo's EBM was therefore
fine-tuned with half the chains restarting (``--init-from`` with ``--reinit 0.5``; BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm
from tqdm import tqdm

from genzoo.config import option
from genzoo.errors import ModelDiverged
from genzoo.options import LANGEVIN_STEPS
from genzoo.models.base import DensityKind, ImagesOrPoints, Preset
from genzoo.nets import MLP, ConvEncoder

MAX_ENERGY = 1e4  # beyond this (the penalty keeps energies near 0) training has diverged
POINTS_BOX = 3.0  # chains on 2-D toy data start uniform on [-3, 3]^2, which holds the toy sets' mass


@dataclass
class EBMConfig:
    channels: int = option(32, "base channels of the conv energy net (images)", min=1)
    hidden: int = option(256, "width of the hidden layers (the conv net's head; the MLP for 2-D data)", min=1)
    depth: int = option(3, "hidden layers of the MLP energy net (2-D toy data)", min=1)
    spectral_norm: bool = option(False, "spectral normalisation of every layer of the energy net")
    sgld_steps: int = option(20, "SGLD steps per training step", min=1)
    # Du & Mordatch (2019)'s image settings: a large gradient step with small noise. With step 1 and noise 0.01
    # the buffer was still noise after 133 steps on MNIST; with these, digit-like blobs after 120 (issue notes).
    step_size: float = option(10.0, "SGLD gradient step size", gt=0.0)
    noise: float = option(0.005, "SGLD noise standard deviation", min=0.0)
    grad_clamp: float = option(0.0, "clamp each pixel's SGLD gradient to +-this before the step (0 = no clamp)", min=0.0)
    data_noise: float = option(0.0, "standard deviation of Gaussian noise added to the training images (model "
                               "space, [-1, 1])", min=0.0)
    buffer_size: int = option(10000, "chains kept in the replay buffer", min=1)
    reinit: float = option(0.05, "probability that a chain restarts from noise", min=0.0, max=1.0)
    energy_reg: float = option(0.1, "weight alpha of the energy penalty alpha (E(x+)^2 + E(x-)^2)", min=0.0)
    sample_steps: int = option(200, "SGLD steps when sampling from noise", min=1)


class EBM(ImagesOrPoints):
    family = "ebm"
    channels_supported = (1, 3)
    sizes_supported = "height and width divisible by 4"
    kind = DensityKind.UNNORMALISED
    Config = EBMConfig
    sample_options = (LANGEVIN_STEPS,)
    train_defaults = {"lr": 1e-4, "epochs": 10}
    presets = {"short-run": Preset(
        "short-run SGLD (Nijkamp et al. 2019): every chain starts from noise and runs 40 steps in training and in "
        "sampling, no replay buffer",
        "FID 556 against 662 for the defaults after the same 200 steps of 128 images (500 samples), sampling 6.7x "
        "faster (AMD EPYC, one thread); benchmarks/recipes.py, BENCHMARKS.md",
        model={"reinit": 1.0, "sgld_steps": 40, "sample_steps": 40, "buffer_size": 1}),
        "zoo": Preset(
            "the replay buffer recipe of Du & Mordatch (2019) as Lippe's UvA tutorial trains it on MNIST: a small "
            "energy net, 60 SGLD steps per training step with each pixel's gradient clamped to 0.03, 8,192 chains "
            "(5 % restarts), training images noised by 0.005; 256 steps from noise to sample (the zoo's EBM, then "
            "fine-tuned with --init-from and --reinit 0.5)",
            "7 epochs, 2.9 hours of one thread (AMD EPYC): FID 408 on 10,000 samples; fine-tuned from it with half "
            "the chains restarting (--reinit 0.5), the best of its weights by validation FID after 550 steps (36 "
            "minutes): FID 87.5 (zoo:ebm-mnist); after 200 steps of 128 images: FID 558 on 500 samples (short-run "
            "556); BENCHMARKS.md",
            model={"channels": 16, "hidden": 64, "sgld_steps": 60, "buffer_size": 8192, "grad_clamp": 0.03,
                   "data_noise": 0.005, "sample_steps": 256},
            train={"epochs": 7})}
    # Adam without momentum (Du & Mordatch 2019's code): the objective moves with the chains at every step
    optimizer_options = {"betas": (0.0, 0.999)}
    final_eval_defaults = {"n": 2500}
    # modes of std 0.02 need SGLD steps of that order (toy-ring: 8 of 8 modes, 90% high-quality samples)
    ddp_broadcast_buffers = False  # each rank keeps its own replay buffer of chains (genzoo.distributed)
    points_defaults = {"model": {"step_size": 0.01, "noise": 0.01, "energy_reg": 0.1}, "train": {"lr": 1e-3, "epochs": 5}}

    def __init__(self, cfg: EBMConfig, image_shape: tuple[int, ...]):
        super().__init__(cfg, image_shape)
        if self.points:
            self.net = MLP(image_shape[0], [cfg.hidden] * cfg.depth, 1, activation="silu")  # smooth: SGLD follows its gradient
        else:
            c, h, w = image_shape
            self.net = ConvEncoder(c, h, w, 1, channels=cfg.channels, hidden=cfg.hidden)
        if cfg.spectral_norm:  # registered in place on each layer (Miyato et al. 2018)
            for module in [m for m in self.net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]:
                _spectral_norm(module)
        self.register_buffer("replay", self.noise_like(cfg.buffer_size))

    RELEASED_CHAINS = 256  # of the replay buffer, shipped in the zoo: enough for sample(from_buffer=True)

    @classmethod
    def for_release(cls, tensors: dict[str, torch.Tensor], model_config: dict) -> tuple[dict, dict]:
        """Ship the first RELEASED_CHAINS chains of the buffer, not all: 8,192 chains are 13 MB even in half
        precision, and sampling starts from noise. (The buffer is drawn from at random, so its first rows are as
        good as any.)"""
        replay = tensors["replay"]
        if len(replay) <= cls.RELEASED_CHAINS:
            return tensors, model_config
        return ({**tensors, "replay": replay[:cls.RELEASED_CHAINS].clone()},
                {**model_config, "buffer_size": cls.RELEASED_CHAINS})

    # --- the energy --------------------------------------------------------------------------------
    def model_energy(self, x: torch.Tensor) -> torch.Tensor:
        """E on model-space data [N x ...] -> [N]."""
        return self.net(x).reshape(x.shape[0])

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x) [N] of data in its view (images in [0, 1], or points): log p(x) = -E(x) - log Z."""
        return self.model_energy(self.to_model_space(x))

    # --- Langevin dynamics -------------------------------------------------------------------------
    def noise_like(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Fresh chain starts: uniform on [-1, 1] (images) or on [-3, 3]^2 (points), [n x ...]."""
        u = torch.rand((n, *self.image_shape), generator=generator, device=device)
        return (2 * u - 1) * (POINTS_BOX if self.points else 1.0)

    def langevin(self, x: torch.Tensor, steps: int, generator: torch.Generator | None = None,
                 progress: bool = False) -> torch.Tensor:
        """SGLD from x (model space) for ``steps`` steps; returns the detached end points."""
        step_size, noise, clamp = self.cfg.step_size, self.cfg.noise, self.cfg.grad_clamp
        x = x.detach()
        with torch.enable_grad():
            for _ in tqdm(range(steps), desc="langevin", unit="step", disable=not progress or None, leave=False):
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.model_energy(x).sum(), x)
                if clamp > 0:
                    grad = grad.clamp(-clamp, clamp)
                x = x.detach() - step_size * grad.to(x.dtype)
                if noise > 0:
                    x = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                if not self.points:
                    x = x.clamp(-1.0, 1.0)
        return x.detach()

    def negatives(self, n: int) -> torch.Tensor:
        """x- for a training step: continue n chains of the replay buffer (or restart them), store them back."""
        device = self.replay.device
        idx = torch.randint(0, len(self.replay), (n,), device=device)
        start = self.replay[idx]
        fresh = torch.rand(n, device=device) < self.cfg.reinit
        start = torch.where(fresh.reshape(-1, *[1] * len(self.image_shape)), self.noise_like(n, device=device), start)
        x_neg = self.langevin(start, self.cfg.sgld_steps)
        self.replay[idx] = x_neg.to(self.replay.dtype)
        return x_neg

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Contrastive divergence per example [N]: E(x+) - E(x-) + alpha (E(x+)^2 + E(x-)^2)."""
        x_pos = self.to_model_space(x)
        if self.cfg.data_noise > 0:  # the data's support widened a little, so that the energy stays smooth there
            x_pos = x_pos + self.cfg.data_noise * torch.randn_like(x_pos)
            x_pos = x_pos if self.points else x_pos.clamp(-1.0, 1.0)
        x_neg = self.negatives(x.shape[0])
        e_pos, e_neg = self.model_energy(x_pos), self.model_energy(x_neg)
        worst = torch.cat([e_pos, e_neg]).detach().abs().max().item()
        if not worst <= MAX_ENERGY:  # also catches NaN
            raise ModelDiverged(f"energies reached {worst:.3g} (raise --energy-reg, lower --lr, or use "
                                f"--spectral-norm true)")
        return e_pos - e_neg + self.cfg.energy_reg * (e_pos ** 2 + e_neg ** 2)

    def validation_metrics(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        chains = self.replay[torch.arange(len(x), device=self.replay.device) % len(self.replay)]
        return {"energy_data": self.energy(x), "energy_buffer": self.model_energy(chains)}

    def diagnose(self, row: dict) -> list[str]:
        e = max(abs(row.get("val_energy_data", 0.0)), abs(row.get("val_energy_buffer", 0.0)))
        if e > 1e3:
            return [f"energies reach {e:.3g}: training is diverging; raise --energy-reg, lower --lr, or use "
                    f"--spectral-norm true."]
        return []

    # --- samples --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, steps: int | None = None,
               from_buffer: bool = False, progress: bool = False) -> torch.Tensor:
        """n samples by SGLD, from uniform noise for ``steps`` steps (default ``sample_steps``), or from the
        replay buffer's chains: images [n x C x H x W] in [0, 1], or points [n x 2]."""
        self.check_sample_options(steps=steps)
        steps = self.cfg.sample_steps if steps is None else steps
        device = self.replay.device
        if from_buffer:
            idx = torch.randint(0, len(self.replay), (n,), generator=generator, device=device)
            start = self.replay[idx]
        else:
            start = self.noise_like(n, generator, device)
        return self.to_data(self.langevin(start, steps, generator, progress))

    @torch.no_grad()
    def pictures(self, x: torch.Tensor, generator: torch.Generator, quick: bool = False) -> dict[str, torch.Tensor]:
        if self.points:
            # test points, samples, the buffer's chains
            return {"samples": self.density_pictures(x, x, self.sample(2000, generator), self.replay)}
        side = 6 if quick else 10  # every sample is a Langevin chain of --sample-steps steps
        samples = self.sample(side * side, generator).reshape(side, side, *self.image_shape)
        if self.cfg.reinit >= 1.0:  # short-run training: every chain starts from noise, the buffer is unused
            return {"samples": samples}
        idx = torch.randint(0, len(self.replay), (100,), generator=generator, device=self.replay.device)
        buffer = self.to_data(self.replay[idx]).reshape(10, 10, *self.image_shape)
        return {"samples": samples, "buffer": buffer}
