"""Denoising diffusion (Ho et al. 2020) with the DDIM sampler (Song et al. 2021); chapter exercises 14.7, 14.14,
14.16, 14.19, 14.26.

The process lives in ``GaussianDiffusion``: tables computed once in float64, the closed form q(x_t | x_0), the
posterior q(x_{t-1} | x_t, x_0), the three parameterisations, the samplers and the variational bound. Its
methods take the denoiser as an argument (``model_fn(x_t, t) -> network output``), so any network — or an
analytic denoiser in a test — can be plugged in. ``DDPM`` joins it to a U-Net as a genzoo family.

Indices: t = 0 .. T-1 in code is t = 1 .. T in the paper; "t = -1" is the data, with alpha_bar = 1.
Data: the 8-bit ``uint8`` view, rescaled to [-1, 1] (x / 127.5 - 1) as in Ho et al.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from genzoo import theory
from genzoo.config import option
from genzoo.errors import ConfigError
from genzoo.models.base import DensityKind, GenerativeModel, Preset, interpolation_pairs
from genzoo.models.denoising import (DenoiserConfig, build_unet, dequantised_log_prob, guided, noise_path, to_image,
                                     to_model_space)
from genzoo.models.labels import balanced_labels, check_labels, class_rows, drop_labels
from genzoo.options import GUIDANCE, LABEL
from genzoo.samplers import CLIP, DIFFUSION_SAMPLERS, ETA, SPACING, STEPS, get_sampler, sampler_choice

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- schedules (frozen: a named schedule never changes once released) ----------------------------------
def beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """beta_1 .. beta_T in float64.

    linear  Ho et al. (2020): beta from 1e-4 to 0.02 over T = 1000 steps; for other T both ends are scaled
            by 1000 / T (Nichol & Dhariwal 2021) so that the total noise stays comparable.
    cosine  Nichol & Dhariwal (2021, eq. 17): alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
            s = 0.008, beta clipped at 0.999.
    """
    if name == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if name == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return torch.clamp(1 - alpha_bar[1:] / alpha_bar[:-1], max=0.999)
    raise ConfigError(f"unknown noise schedule '{name}'; choose one of: {', '.join(SCHEDULES)}.")


def timestep_subsequence(timesteps: int, steps: int, spacing: str = "uniform") -> list[int]:
    """The increasing subsequence tau of 0..T-1 that DDIM steps over (Song et al. 2021, section 4.2).

    uniform    evenly spaced, from 0 to T - 1 inclusive;
    quadratic  tau_i proportional to i^2 (the DDIM paper's choice for CIFAR-10), denser near the data.
    """
    if not 1 <= steps <= timesteps:
        raise ConfigError(f"--steps must be between 1 and the {timesteps} training timesteps; got {steps}.")
    if steps == 1:
        return [timesteps - 1]
    if spacing == "uniform":
        tau = np.round(np.linspace(0, timesteps - 1, steps)).astype(int)
    elif spacing == "quadratic":
        tau = np.floor(np.linspace(0, 1, steps) ** 2 * (timesteps - 1)).astype(int)
        for i in range(1, steps):  # keep it strictly increasing when steps is close to T ...
            tau[i] = max(tau[i], tau[i - 1] + 1)
        tau = np.minimum(tau, timesteps - steps + np.arange(steps))  # ... and within 0..T-1
    else:
        raise ConfigError(f"unknown timestep spacing '{spacing}'; choose uniform or quadratic.")
    tau = sorted(set(int(v) for v in tau))
    assert len(tau) == steps and tau[-1] <= timesteps - 1
    return tau


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 8 and its section 3.4): the weight of each parameterisation's
    MSE that makes it min(SNR_t, gamma) * ||x0_hat - x0||^2. eps: min(SNR, gamma) / SNR; x0: min(SNR, gamma);
    v: min(SNR, gamma) / (SNR + 1). gamma = 0 is L_simple (weight 1)."""
    if gamma == 0:
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    return clipped if prediction == "x0" else clipped / (snr + 1.0)


def _gather(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """table[t] shaped to broadcast against a [N x ...] tensor of ``ndim`` dimensions."""
    return table[t].reshape(-1, *([1] * (ndim - 1)))


def stratum_edges(T: int, k: int) -> list[int]:
    """k contiguous strata [edges[j], edges[j+1]) covering the 0-based steps 1..T-1 of the bound's KL terms, spaced
    geometrically: the terms are largest and change fastest at small t (where the first strata hold one step each,
    computed exactly) and are small and smooth at large t, so this spacing gives the stratified estimate far less
    noise than equal strata (measured on the zoo DDPM: BENCHMARKS.md)."""
    edges = [1]
    for j in range(1, k + 1):
        edges.append(min(max(edges[-1] + 1, round(T ** (j / k))), T - (k - j)))
    return edges


class GaussianDiffusion(torch.nn.Module):
    """The forward process, its posterior, the parameterisations, the samplers and the bound (no parameters)."""

    def __init__(self, betas: torch.Tensor, prediction: str = "eps", variance: str = "beta_tilde",
                 min_snr_gamma: float = 0.0):
        super().__init__()
        if min_snr_gamma < 0:
            raise ConfigError(f"--min-snr-gamma must be non-negative (0 = off); got {min_snr_gamma}.")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"unknown prediction '{prediction}'; choose one of: {', '.join(PREDICTIONS)}.")
        if variance not in ("beta", "beta_tilde"):
            raise ConfigError(f"unknown reverse variance '{variance}'; choose beta or beta_tilde.")
        self.prediction, self.variance = prediction, variance
        betas = betas.to(torch.float64)
        self.timesteps = len(betas)
        alphas = 1.0 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        beta_tilde = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)  # posterior variance (Ho et al. eq. 7)
        tables = {
            "betas": betas, "alphas": alphas, "alpha_bar": alpha_bar, "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(), "sqrt_one_minus_alpha_bar": (1.0 - alpha_bar).sqrt(),
            "beta_tilde": beta_tilde,
            # beta_tilde_0 = 0: its log is taken from beta_tilde_1 (the value never enters a KL, only L_0)
            "log_beta_tilde": torch.log(torch.cat([beta_tilde[1:2], beta_tilde[1:]])),
            # sigma_t^2 = beta_t, with beta_tilde_1 at t = 1 so that L_0's decoder is not too wide (Ho et al. 3.2)
            "log_beta": torch.log(torch.cat([beta_tilde[1:2], betas[1:]])),
            "posterior_coef_x0": betas * alpha_bar_prev.sqrt() / (1.0 - alpha_bar),
            "posterior_coef_xt": (1.0 - alpha_bar_prev) * alphas.sqrt() / (1.0 - alpha_bar),
            "loss_weight": min_snr_weight(alpha_bar / (1.0 - alpha_bar), prediction, min_snr_gamma),
        }
        for name, value in tables.items():  # computed in float64, cast once
            self.register_buffer(name, value.float(), persistent=False)
        self.register_buffer("alpha_bar64", alpha_bar, persistent=False)
        # sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t): the noise level of x_t / sqrt(alpha_bar_t) (EDM, table 1)
        self.sigmas64 = ((1.0 - alpha_bar) / alpha_bar).sqrt().tolist()
        self._log_sigmas = np.log(np.array(self.sigmas64))

    def subsequence(self, steps: int, spacing: str = "uniform") -> list[int]:
        return timestep_subsequence(self.timesteps, steps, spacing)

    def t_from_sigma(self, sigma: float) -> float:
        """The continuous timestep of noise level sigma, by linear interpolation of log sigma between the
        training timesteps (the network is trained on integers but its time embedding is continuous)."""
        return float(np.interp(math.log(sigma), self._log_sigmas, np.arange(self.timesteps)))

    def x0_at_sigma(self, output: torch.Tensor, xt: torch.Tensor, sigma: float, clip: bool = False) -> torch.Tensor:
        """x0_hat from the network output at x_t of noise level sigma: alpha_bar = 1 / (1 + sigma^2)."""
        sqrt_ab, sqrt_1m_ab = 1.0 / math.sqrt(1.0 + sigma ** 2), sigma / math.sqrt(1.0 + sigma ** 2)
        if self.prediction == "eps":
            x0 = (xt - sqrt_1m_ab * output) / sqrt_ab
        elif self.prediction == "x0":
            x0 = output
        else:
            x0 = sqrt_ab * xt - sqrt_1m_ab * output
        return x0.clamp(-1.0, 1.0) if clip else x0

    # --- the forward process (14.7, 14.14) ----------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), in one step: O(1) in T."""
        return _gather(self.sqrt_alpha_bar, t, x0.dim()) * x0 + _gather(self.sqrt_one_minus_alpha_bar, t, x0.dim()) * eps

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7)."""
        mean = _gather(self.posterior_coef_x0, t, xt.dim()) * x0 + _gather(self.posterior_coef_xt, t, xt.dim()) * xt
        return mean, _gather(self.log_beta_tilde, t, xt.dim()).expand_as(xt)

    # --- parameterisations -------------------------------------------------------------------------
    def x0_from_eps(self, xt, t, eps):
        return (xt - _gather(self.sqrt_one_minus_alpha_bar, t, xt.dim()) * eps) / _gather(self.sqrt_alpha_bar, t, xt.dim())

    def eps_from_x0(self, xt, t, x0):
        return (xt - _gather(self.sqrt_alpha_bar, t, xt.dim()) * x0) / _gather(self.sqrt_one_minus_alpha_bar, t, xt.dim())

    def v_from(self, x0, t, eps):
        """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022)."""
        return _gather(self.sqrt_alpha_bar, t, x0.dim()) * eps - _gather(self.sqrt_one_minus_alpha_bar, t, x0.dim()) * x0

    def x0_from_v(self, xt, t, v):
        return _gather(self.sqrt_alpha_bar, t, xt.dim()) * xt - _gather(self.sqrt_one_minus_alpha_bar, t, xt.dim()) * v

    def eps_from_v(self, xt, t, v):
        return _gather(self.sqrt_one_minus_alpha_bar, t, xt.dim()) * xt + _gather(self.sqrt_alpha_bar, t, xt.dim()) * v

    def target(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output under this parameterisation."""
        if self.prediction == "eps":
            return eps
        return x0 if self.prediction == "x0" else self.v_from(x0, t, eps)

    def predict(self, output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                clip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) from the network output, whichever parameterisation it uses."""
        if self.prediction == "eps":
            eps, x0 = output, self.x0_from_eps(xt, t, output)
        elif self.prediction == "x0":
            x0, eps = output, self.eps_from_x0(xt, t, output)
        else:
            x0, eps = self.x0_from_v(xt, t, output), self.eps_from_v(xt, t, output)
        if clip:  # clip x0_hat to the data range and make eps consistent with it
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.eps_from_x0(xt, t, x0)
        return x0, eps

    def score(self, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log q(x_t | x_0) = -eps / sqrt(1 - alpha_bar_t) (14.16)."""
        return theory.score_from_noise(eps, _gather(self.alpha_bar, t, eps.dim()))

    # --- training ----------------------------------------------------------------------------------
    def training_loss(self, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor | None = None,
                      eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                      weighted: bool = True) -> torch.Tensor:
        """L_simple (Ho et al. eq. 14): the mean squared error of the parameterisation's target, per example,
        times the min-SNR-gamma weight of its timestep when ``weighted`` and gamma > 0 (1 otherwise).
        The timesteps and the noise not given are drawn from ``generator`` (torch's global one when None)."""
        n = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.timesteps, (n,), device=x0.device, generator=generator)
        if eps is None:
            eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        output = model_fn(self.q_sample(x0, t, eps), t)
        mse = ((output - self.target(x0, t, eps)) ** 2).reshape(n, -1).mean(dim=1)
        return mse * self.loss_weight[t] if weighted else mse

    # --- the reverse process ---------------------------------------------------------------------
    def p_mean_logvar(self, model_fn: ModelFn, xt: torch.Tensor, t: torch.Tensor, clip: bool = False):
        """Mean and log-variance of p(x_{t-1} | x_t), and x0_hat: the posterior mean at x0_hat (Ho et al. eq. 11)."""
        x0, _ = self.predict(model_fn(xt, t), xt, t, clip)
        mean, _ = self.q_posterior(x0, xt, t)
        logvar = _gather(self.log_beta if self.variance == "beta" else self.log_beta_tilde, t, xt.dim()).expand_as(xt)
        return mean, logvar, x0

    @torch.no_grad()
    def ddpm_sample(self, model_fn: ModelFn, noise: torch.Tensor, generator: torch.Generator | None = None,
                    clip: bool = True, progress: bool = False, trajectory: list | None = None) -> torch.Tensor:
        """Ancestral sampling (Ho et al. Algorithm 2) over all T steps, from x_T = ``noise``."""
        x = noise
        for i in tqdm(range(self.timesteps - 1, -1, -1), desc="ddpm", disable=not progress or None, leave=False):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            mean, logvar, _ = self.p_mean_logvar(model_fn, x, t, clip)
            if i > 0:  # no noise is added at the last step
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = mean + torch.exp(0.5 * logvar) * z
            else:
                x = mean
            if trajectory is not None:
                trajectory.append((i, x))
        return x

    @torch.no_grad()
    def ddim_sample(self, model_fn: ModelFn, noise: torch.Tensor, tau: list[int], eta: float = 0.0,
                    generator: torch.Generator | None = None, clip: bool = True, progress: bool = False,
                    trajectory: list | None = None) -> torch.Tensor:
        """DDIM (Song et al. 2021, eq. 12) over the increasing timestep list ``tau``, from x_{tau[-1]} = ``noise``.

        The previous timestep is taken from the list (never from a stride formula). eta = 0 is deterministic;
        eta = 1 with tau = 0..T-1 is ancestral sampling with sigma_t^2 = beta_tilde_t.
        """
        if eta < 0:
            raise ConfigError(f"--eta must be non-negative; got {eta}.")
        x = noise
        for k in tqdm(range(len(tau) - 1, -1, -1), desc="ddim", disable=not progress or None, leave=False):
            t = torch.full((x.shape[0],), tau[k], device=x.device, dtype=torch.long)
            a_t = self.alpha_bar64[tau[k]]
            a_prev = self.alpha_bar64[tau[k - 1]] if k > 0 else torch.ones((), dtype=torch.float64)
            x0, eps = self.predict(model_fn(x, t), x, t, clip)
            # sigma_tau(eta) of eq. 16
            sigma = eta * torch.sqrt((1 - a_prev) / (1 - a_t)) * torch.sqrt(1 - a_t / a_prev)
            direction = torch.sqrt((1 - a_prev - sigma ** 2).clamp(min=0.0))
            x = a_prev.sqrt().float() * x0 + direction.float() * eps
            if k > 0 and eta > 0:
                x = x + sigma.float() * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            if trajectory is not None:
                trajectory.append((tau[k - 1] if k > 0 else -1, x))
        return x

    @torch.no_grad()
    def ddim_invert(self, model_fn: ModelFn, x0: torch.Tensor, tau: list[int], progress: bool = False) -> torch.Tensor:
        """DDIM inversion: the deterministic (eta = 0) update run forwards, image -> x_{tau[-1]}.

        Each step from tau[k-1] to tau[k] reuses the noise the network predicts at tau[k], the approximation
        eps(x_{tau[k-1]}, tau[k]) ~ eps(x_{tau[k]}, tau[k]) that becomes exact as the steps get small; the
        reverse DDIM step from tau[k] back to tau[k-1] then undoes it.
        """
        x = x0
        for k in tqdm(range(len(tau)), desc="invert", disable=not progress or None, leave=False):
            t = torch.full((x.shape[0],), tau[k], device=x.device, dtype=torch.long)
            a_cur = self.alpha_bar64[tau[k - 1]] if k > 0 else torch.ones((), dtype=torch.float64)
            a_next = self.alpha_bar64[tau[k]]
            _, eps = self.predict(model_fn(x, t), x, t)
            x0_hat = (x - (1 - a_cur).sqrt().float() * eps) / a_cur.sqrt().float()
            x = a_next.sqrt().float() * x0_hat + (1 - a_next).sqrt().float() * eps
        return x

    # --- the likelihood through the probability-flow ODE -----------------------------------------------------
    def ode_log_likelihood(self, model_fn: ModelFn, x0: torch.Tensor, steps: int = 0, probes: int = 1,
                           generator: torch.Generator | None = None, tol: float = 1e-5,
                           evaluations: list | None = None) -> torch.Tensor:
        """log p(x0) [N] of data x0 in model space through the probability-flow ODE (Song et al. 2021b). In
        x~ = x_t / sqrt(alpha_bar) the ODE runs from sigma_min (the first timestep), where x~ is taken to be the
        data, to sigma_max, where x~ ~ N(0, (1 + sigma_max^2) I); in s = log(sigma / sigma_min) / log(sigma_max /
        sigma_min) it reads dx~/ds = log(sigma_max / sigma_min) (x~ - D(x~; sigma)) (EDM eq. 3, sigma = e^s)."""
        sigma_min, sigma_max = self.sigmas64[0], self.sigmas64[-1]
        span = math.log(sigma_max / sigma_min)

        def velocity(x_tilde, s):
            sigma = sigma_min * math.exp(span * float(s[0]))
            scale = 1.0 / math.sqrt(1.0 + sigma ** 2)
            t = torch.full((len(x_tilde),), self.t_from_sigma(sigma), device=x_tilde.device)
            return span * (x_tilde - self.x0_at_sigma(model_fn(x_tilde * scale, t), x_tilde * scale, sigma))

        var = 1.0 + sigma_max ** 2

        def prior(z):
            return theory.sum_except_batch(-0.5 * z ** 2 / var - 0.5 * math.log(2 * math.pi * var))

        return theory.ode_log_likelihood(velocity, x0, prior, steps, probes, generator, tol, evaluations)

    # --- the variational bound ---------------------------------------------------------------------
    @torch.no_grad()
    def bound_terms(self, model_fn: ModelFn, x0: torch.Tensor, generator: torch.Generator | None = None,
                    progress: bool = False, t_samples: int = 0) -> dict[str, torch.Tensor]:
        """The terms of -ELBO in nats per example (Ho et al. eq. 5):

        prior  KL(q(x_T | x_0) || N(0, I))
        kl     sum over t = 2..T of KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   (Gaussian KLs, 14.19)
        l0     -log p(x_0 | x_1) under the discretised Gaussian decoder (eq. 13)

        ``t_samples`` = 0 sums every one of the T - 1 KL terms (T network evaluations per image). K > 0 estimates
        the sum from K steps per image, one drawn uniformly from each of K contiguous strata of t = 2..T
        (``stratum_edges``) and weighted by its stratum's size: unbiased (the expectation is the full sum), K + 1
        evaluations per image, and since each image's draws are independent its noise is part of the per-image
        spread, so the standard error of a test-set mean still covers it."""
        n, T = x0.shape[0], self.timesteps
        kl_sum = torch.zeros(n, dtype=torch.float64, device=x0.device)

        def term(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """(x_t drawn from q(x_t | x_0), and the mean and log-variance of p(x_{t-1} | x_t)) for per-example steps
            t (0-based)."""
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            xt = self.q_sample(x0, t, eps)
            mean, logvar, _ = self.p_mean_logvar(model_fn, xt, t, clip=False)
            return xt, mean, logvar

        def kl(t: torch.Tensor) -> torch.Tensor:
            xt, mean, logvar = term(t)
            true_mean, true_logvar = self.q_posterior(x0, xt, t)
            return theory.sum_except_batch(theory.gaussian_kl(true_mean.double(), true_logvar.double(),
                                                              mean.double(), logvar.double()))

        _, mean, logvar = term(torch.zeros(n, device=x0.device, dtype=torch.long))
        l0 = -theory.sum_except_batch(
            theory.discretized_gaussian_log_likelihood(x0.double(), mean.double(), 0.5 * logvar.double()))
        if t_samples == 0 or t_samples >= T - 1:
            for i in tqdm(range(1, T), desc="bound", disable=not progress or None, leave=False):
                kl_sum += kl(torch.full((n,), i, device=x0.device, dtype=torch.long))
        else:
            edges = stratum_edges(T, t_samples)
            for a, b in tqdm(list(zip(edges, edges[1:])), desc="bound", disable=not progress or None, leave=False):
                u = torch.rand(n, generator=generator, device=x0.device)
                t = (a + (u * (b - a)).long()).clamp(max=b - 1)
                kl_sum += (b - a) * kl(t)
        a_T = self.alpha_bar64[-1]
        mean_T = a_T.sqrt() * x0.double()
        prior = theory.sum_except_batch(theory.gaussian_kl(mean_T, torch.log(1 - a_T).expand_as(mean_T),
                                                           torch.zeros_like(mean_T), torch.zeros_like(mean_T)))
        total = prior + kl_sum + l0
        assert total.shape == (n,)
        return {"prior": prior, "kl": kl_sum, "l0": l0, "neg_elbo": total}


# --- the family ------------------------------------------------------------------------------------------
@dataclass
class DDPMConfig(DenoiserConfig):
    schedule: str = option("linear", "noise schedule", choices=SCHEDULES)
    timesteps: int = option(1000, "diffusion steps T", min=2, max=10000)
    pred: str = option("eps", "what the network predicts", choices=PREDICTIONS)
    variance: str = option("beta_tilde", "reverse-process variance sigma_t^2", choices=("beta", "beta_tilde"))
    min_snr_gamma: float = option(0.0, "weight each timestep's loss by min-SNR-gamma (Hang et al. 2023; 5 is their "
                                  "choice; 0 = the plain L_simple)", min=0.0)


class DDPM(GenerativeModel):
    family = "ddpm"
    kind = DensityKind.BOUND
    view = "uint8"
    Config = DDPMConfig
    sample_options = (sampler_choice(DIFFUSION_SAMPLERS, "ddim"), STEPS, ETA, SPACING, CLIP, LABEL, GUIDANCE)
    class_conditional = True
    channels_supported = (1, 3)
    can_invert = True
    can_interpolate = True
    ode_likelihood = True
    # EMA weights sample far better than the raw ones (Ho et al. use 0.9999 over 800k steps; CPU runs are short).
    train_defaults = {"lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 200, "grad_clip": 1.0,
                      "ema_decay": 0.999, "ema_warmup": True}
    presets = {"min-snr": Preset(
        "eps-prediction with the min-SNR-5 loss weighting (Hang et al. 2023)",
        "FID 339 against 444 for the defaults after the same 300 steps of 128 images (1,000 samples, DPM-Solver++(2M) "
        "20 steps; AMD EPYC, one thread); benchmarks/recipes.py, BENCHMARKS.md",
        model={"min_snr_gamma": 5.0}),
        "zoo": Preset(
            "class-conditional with min-SNR-5, 12 epochs (cosine): the recipe of zoo:ddpm-mnist",
            "FID 8.3 on 10,000 samples (DPM-Solver++(2M) 20 steps, w = 1; real digits 4.1), bound 3.00 bits/dim, ODE "
            "2.98 (all 10,000 test images; min-SNR trades likelihood for samples), 3.8 hours on one thread (AMD EPYC, "
            "AVX2, fp32); BENCHMARKS.md",
            model={"min_snr_gamma": 5.0, "class_cond": True}, train={"epochs": 12})}
    # The bound costs T network evaluations per image, so it is computed on the first N test images, N stated with
    # every figure.
    eval_defaults = {"n": 500}
    final_eval_defaults = {"n": 100}
    quick_eval = None  # the bound costs T network evaluations per image: a short run skips it

    def __init__(self, cfg: DDPMConfig, image_shape: tuple[int, int, int]):
        super().__init__(cfg, image_shape)
        self.net = build_unet(cfg, image_shape)
        self.diffusion = GaussianDiffusion(beta_schedule(cfg.schedule, cfg.timesteps), cfg.pred, cfg.variance,
                                           cfg.min_snr_gamma)

    to_model_space = staticmethod(to_model_space)
    to_image = staticmethod(to_image)

    def model_fn(self, y: torch.Tensor | None = None, guidance: float = 1.0) -> ModelFn:
        """The denoiser as a function of (x_t, t), guided towards labels y with scale ``guidance``."""
        return guided(self.net, y, guidance)

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        y = drop_labels(self.cfg, y, generator)
        return self.diffusion.training_loss(lambda xt, t: self.net(xt, t, y), self.to_model_space(x),
                                            generator=generator)

    def validation_metrics(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"mse": self.diffusion.training_loss(self.model_fn(), self.to_model_space(x), weighted=False)}

    def elbo(self, x: torch.Tensor, t_samples: int = 0) -> torch.Tensor:
        """The variational lower bound on log P(x) of the 8-bit image, in nats: all T terms, or the KL sum estimated
        from ``t_samples`` stratified steps per image (``GaussianDiffusion.bound_terms``)."""
        return -self.diffusion.bound_terms(self.model_fn(), self.to_model_space(x),
                                           t_samples=t_samples)["neg_elbo"].float()

    def likelihood_options(self, cfg) -> dict:
        return {"t_samples": cfg.bound_t if cfg.bound_t < self.cfg.timesteps - 1 else 0}  # T - 1 or more: every step

    def bound_estimator(self, cfg) -> str:
        k = self.likelihood_options(cfg)["t_samples"]
        return f"the KL sum from {k} stratified steps per image (unbiased; its noise is inside the standard error)" \
            if k else ""

    def ode_log_prob(self, x: torch.Tensor, steps: int = 0, probes: int = 1, generator: torch.Generator | None = None,
                     tol: float = 1e-5, evaluations: list | None = None) -> torch.Tensor:
        """log P(x) of 8-bit images [N x C x H x W] (nats) through the probability-flow ODE, dequantised as a flow
        is: log P(x) >= E_u[log p(2 (x + u) / 256 - 1)] + D log 2 - D log 256."""
        self.check_discrete(x, 256, "the probability-flow ODE")
        return dequantised_log_prob(
            lambda x0: self.diffusion.ode_log_likelihood(self.model_fn(), x0, steps, probes, generator, tol,
                                                         evaluations), x, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, sampler: str = "ddim",
               y: torch.Tensor | None = None, guidance: float = 1.0, progress: bool = False,
               trajectory: list | None = None, noise: torch.Tensor | None = None, **options) -> torch.Tensor:
        """n images [n x C x H x W] in [0, 1] by one of ``samplers.DIFFUSION_SAMPLERS`` (its options: steps, eta,
        spacing, clip, as it declares). ``noise`` [n x C x H x W] replaces the drawn x_T, e.g. the output of
        ``invert``; ``y`` [n] draws those classes with classifier-free guidance scale ``guidance``."""
        self.check_sample_options(sampler=sampler, guidance=guidance, **options)
        chosen = get_sampler(DIFFUSION_SAMPLERS, sampler, self.family)
        check_labels(self.cfg, y)
        device = self.diffusion.betas.device  # the tables move with the model
        if noise is None:
            noise = torch.randn((n, *self.image_shape), generator=generator, device=device)
        x = chosen(self.diffusion, self.model_fn(y, guidance), noise, generator, progress, trajectory, **options)
        return self.to_image(x)

    @torch.no_grad()
    def invert(self, x: torch.Tensor, steps: int | None = None, spacing: str = "uniform",
               progress: bool = False) -> torch.Tensor:
        """DDIM inversion of uint8-view images [N x C x H x W] (values 0..255) to their x_T: the deterministic
        encoder that ``sample(..., noise=latent, sampler="ddim", eta=0)`` with the same steps decodes."""
        steps = min(100, self.diffusion.timesteps) if steps is None else steps
        tau = timestep_subsequence(self.diffusion.timesteps, steps, spacing)
        return self.diffusion.ddim_invert(self.model_fn(), self.to_model_space(x), tau, progress)

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, frames: int = 10,
                    steps: int | None = None) -> torch.Tensor:
        """Decode (DDIM, eta = 0) the spherical path between the DDIM-inverted x_T of uint8-view images x1 and x2,
        as in Song et al. 2021, section 5.3: [N x frames x C x H x W] in [0, 1]. Steps: 50 or T if fewer."""
        steps = min(50, self.diffusion.timesteps) if steps is None else steps
        path = noise_path(self.invert(x1, steps), self.invert(x2, steps), frames)
        images = self.sample(len(path), noise=path, sampler="ddim", steps=steps, eta=0.0)
        return images.reshape(len(x1), frames, *self.image_shape)

    def scoring_labels(self, n: int, device: torch.device) -> torch.Tensor | None:
        return balanced_labels(self.cfg, n, device)

    @torch.no_grad()
    def pictures(self, x: torch.Tensor, generator: torch.Generator, quick: bool = False) -> dict[str, torch.Tensor]:
        y = class_rows(self.cfg, x.device)
        trajectory: list = []
        samples = self.sample(100, generator, sampler="dpm++2m" if quick else "ddim", y=y,
                              guidance=2.0 if y is not None else 1.0, trajectory=trajectory,
                              steps=10 if quick else None)
        # 4 samples' paths from noise to image, 10 snapshots each
        picks = np.linspace(0, len(trajectory) - 1, 10).round().astype(int)
        strip = torch.stack([self.to_image(trajectory[i][1][:4]) for i in picks], dim=1)  # (4, 10, C, H, W)
        out = {"samples": samples.reshape(10, 10, *self.image_shape), "trajectory": strip}
        if not quick:  # 4 pairs: 8 inversions and 40 decodings of 50 evaluations each
            out["interp"] = self.interpolate(*interpolation_pairs(x))
        return out
