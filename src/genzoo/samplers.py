"""Samplers: one object per algorithm, each declaring its options, in the paper's symbols.

A sampler turns noise into data with a trained denoiser or velocity field; it knows nothing of networks. The
diffusion samplers take a ``GaussianDiffusion`` (the process and its tables) and ``model_fn(x_t, t)``; the flow
samplers take a ``LinearFlow`` and ``model_fn(x_t, t)`` for the velocity.

Discrete-time diffusion (Ho et al. 2020; Song et al. 2021):
    ddpm      ancestral sampling, Ho et al. Algorithm 2. --steps T (the default) takes all T steps; fewer steps
              sample ancestrally on the timestep subsequence with the skipping process's posterior variance,
              which is DDIM with eta = 1 (Song et al. 2021, eq. 16).
    ddim      DDIM, Song et al. 2021 eq. 12, on a timestep subsequence; deterministic at eta = 0.

The probability-flow ODE (Song et al. 2021b), in the variables of Karras et al. 2022 (EDM, section 2):
x~ = x_t / sqrt(alpha_bar_t) and sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t), where it reads

    dx~/dsigma = (x~ - D(x~; sigma)) / sigma,        D = the denoiser's estimate of x_0,          (EDM eq. 3)

solved from sigma_max (the last timestep) down to 0 on Karras et al.'s schedule (eq. 5, rho = 7) or on sigmas
of evenly spaced timesteps:
    euler     Euler's method (first order; DDIM at eta = 0 is this method on the training timesteps).
    heun      Heun's second-order method, Karras et al. 2022 Algorithm 1 (2 N - 1 network evaluations).
    dpm++2m   DPM-Solver++(2M), Lu et al. 2022 Algorithm 2: multistep, second order, one evaluation per step.

Flow matching (Lipman et al. 2023; Liu et al. 2023), the ODE dx_t/dt = v(x_t, t) from t = 1 (noise) to 0:
    euler, heun, midpoint on evenly spaced times; ``flow_invert`` runs the same ODE forwards, image to noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from genzoo.errors import ConfigError
from genzoo.options import Option, check_options, non_negative, positive

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Field = Callable[[torch.Tensor, float], torch.Tensor]  # dx/ds at (x, s)

STEPS = Option("steps", int, "network steps of the sampler (default: the sampler's)", check=positive)
ETA = Option("eta", float, "ddim: noise scale eta, 0 = deterministic (default 0)", check=non_negative)
SPACING = Option("spacing", str, "timesteps: uniform or quadratic (ddpm, ddim); karras or uniform (ODE solvers)",
                 choices=("uniform", "quadratic", "karras"))
CLIP = Option("clip", bool, "diffusion: clip x0_hat to the data range (default true)")


@dataclass(frozen=True)
class Sampler:
    name: str
    help: str
    options: tuple[Option, ...]
    run: Callable[..., torch.Tensor]  # (process, model_fn, noise, generator, progress, trajectory, **options)
    spacings: tuple[str, ...] = ()

    def __call__(self, process, model_fn: ModelFn, noise: torch.Tensor, generator: torch.Generator | None = None,
                 progress: bool = False, trajectory: list | None = None, **options) -> torch.Tensor:
        options = {k: v for k, v in options.items() if v is not None}
        check_options(f"the {self.name} sampler", self.options, options)
        if "spacing" in options and options["spacing"] not in self.spacings:
            raise ConfigError(f"the {self.name} sampler takes --spacing {' or '.join(self.spacings)}; "
                              f"got {options['spacing']}.")
        return self.run(process, model_fn, noise, generator, progress, trajectory, **options)


def check_steps(steps: int, most: int) -> None:
    if not 1 <= steps <= most:
        raise ConfigError(f"--steps must be between 1 and the {most} training timesteps; got {steps}.")


# --- generic ODE solvers on a decreasing grid s_0 > s_1 > ... > s_N -------------------------------------------
def solve_ode(method: str, f: Field, x: torch.Tensor, grid: list[float], defined_at_end: bool = True,
              progress: bool = False, trajectory: list | None = None,
              snapshot: Callable[[torch.Tensor, float], torch.Tensor] | None = None) -> torch.Tensor:
    """Integrate dx/ds = f(x, s) along ``grid`` with Euler, Heun (Karras et al. 2022, Algorithm 1) or the
    midpoint method. Where f is undefined at the grid's end (sigma = 0), Heun's last step is an Euler step."""
    for i in tqdm(range(len(grid) - 1), desc=method, disable=not progress or None, leave=False):
        s, s_next = grid[i], grid[i + 1]
        h = s_next - s
        d = f(x, s)
        if method == "euler":
            x = x + h * d
        elif method == "heun":
            x_euler = x + h * d
            if i == len(grid) - 2 and not defined_at_end:
                x = x_euler
            else:  # the trapezoidal correction (Algorithm 1, lines 9-11)
                x = x + h * 0.5 * (d + f(x_euler, s_next))
        elif method == "midpoint":
            x = x + h * f(x + 0.5 * h * d, s + 0.5 * h)
        else:
            raise ConfigError(f"unknown ODE method '{method}'.")
        if trajectory is not None:
            trajectory.append((s_next, snapshot(x, s_next) if snapshot else x))
    return x


# --- the probability-flow ODE of a discrete-time diffusion -------------------------------------------------
def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> list[float]:
    """Karras et al. 2022 eq. 5: steps sigmas from sigma_max to sigma_min, evenly spaced in sigma^(1/rho)."""
    if steps == 1:
        return [sigma_max]
    ramp = np.linspace(0.0, 1.0, steps)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return [float(v) for v in inv ** rho]


def diffusion_sigmas(diffusion, steps: int, spacing: str) -> list[float]:
    """The decreasing sigmas an ODE sampler visits, ending with 0 (the data)."""
    check_steps(steps, diffusion.timesteps)
    table = diffusion.sigmas64
    if spacing == "karras":
        sigmas = karras_sigmas(float(table[0]), float(table[-1]), steps)
    else:  # the timesteps DDIM visits, so that Euler on them is DDIM at eta = 0 (tested)
        sigmas = [float(table[i]) for i in reversed(diffusion.subsequence(steps, spacing))]
    return sigmas + [0.0]


def _pf_ode(diffusion, model_fn: ModelFn, clip: bool) -> tuple[Callable, Field]:
    """The denoiser D(x~; sigma) and the ODE's field (x~ - D) / sigma (EDM eq. 3)."""
    def denoise(x_tilde: torch.Tensor, sigma: float) -> torch.Tensor:
        scale = 1.0 / math.sqrt(1.0 + sigma ** 2)  # sqrt(alpha_bar) at this sigma
        t = torch.full((x_tilde.shape[0],), diffusion.t_from_sigma(sigma), device=x_tilde.device)
        return diffusion.x0_at_sigma(model_fn(x_tilde * scale, t), x_tilde * scale, sigma, clip)
    return denoise, lambda x, sigma: (x - denoise(x, sigma)) / sigma


def _x_t(x_tilde: torch.Tensor, sigma: float) -> torch.Tensor:
    return x_tilde / math.sqrt(1.0 + sigma ** 2)


def _ode_sampler(method: str):
    def run(diffusion, model_fn, noise, generator, progress, trajectory, steps: int = 20, spacing: str = "karras",
            clip: bool = True):
        sigmas = diffusion_sigmas(diffusion, steps, spacing)
        _, f = _pf_ode(diffusion, model_fn, clip)
        x = noise * math.sqrt(1.0 + sigmas[0] ** 2)  # x~_T = x_T / sqrt(alpha_bar_T)
        return solve_ode(method, f, x, sigmas, defined_at_end=False, progress=progress, trajectory=trajectory,
                         snapshot=_x_t)
    return run


def _dpmpp_2m(diffusion, model_fn, noise, generator, progress, trajectory, steps: int = 20,
              spacing: str = "karras", clip: bool = True):
    """DPM-Solver++(2M), Lu et al. 2022 Algorithm 2, in the sigma form: lambda = -log sigma, h_i = lambda_{i+1} -
    lambda_i; x_{i+1} = (sigma_{i+1} / sigma_i) x_i - (e^{-h_i} - 1) D_i, with D_i corrected by the previous
    denoised estimate, D_i + (D_i - D_{i-1}) / (2 r_i), r_i = h_{i-1} / h_i, after the first step."""
    sigmas = diffusion_sigmas(diffusion, steps, spacing)
    denoise, _ = _pf_ode(diffusion, model_fn, clip)
    x = noise * math.sqrt(1.0 + sigmas[0] ** 2)
    previous, h_previous = None, None
    for i in tqdm(range(len(sigmas) - 1), desc="dpm++2m", disable=not progress or None, leave=False):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = denoise(x, sigma)
        if sigma_next == 0.0:  # the last step lands on the denoised estimate
            x = d
        else:
            h = math.log(sigma) - math.log(sigma_next)
            if previous is not None:
                r = h_previous / h
                d_corrected = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * previous
            else:
                d_corrected = d
            x = (sigma_next / sigma) * x - math.expm1(-h) * d_corrected
            h_previous = h
        previous = d
        if trajectory is not None:
            trajectory.append((sigma_next, _x_t(x, sigma_next)))
    return x


def _ddpm(diffusion, model_fn, noise, generator, progress, trajectory, steps: int | None = None,
          spacing: str = "uniform", clip: bool = True):
    steps = diffusion.timesteps if steps is None else steps
    check_steps(steps, diffusion.timesteps)
    if steps == diffusion.timesteps:
        return diffusion.ddpm_sample(model_fn, noise, generator, clip, progress, trajectory)
    tau = diffusion.subsequence(steps, spacing)  # ancestral on the subsequence: DDIM's eta = 1
    return diffusion.ddim_sample(model_fn, noise, tau, 1.0, generator, clip, progress, trajectory)


def _ddim(diffusion, model_fn, noise, generator, progress, trajectory, steps: int | None = None, eta: float = 0.0,
          spacing: str = "uniform", clip: bool = True):
    steps = min(100, diffusion.timesteps) if steps is None else steps
    tau = diffusion.subsequence(steps, spacing)
    return diffusion.ddim_sample(model_fn, noise, tau, eta, generator, clip, progress, trajectory)


DIFFUSION_SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddpm", "ancestral sampling (Ho et al. Algorithm 2); --steps below T samples the subsequence "
                    "with eta = 1", (STEPS, SPACING, CLIP), _ddpm, ("uniform", "quadratic")),
    Sampler("ddim", "DDIM (Song et al. 2021, eq. 12), 100 steps by default", (STEPS, ETA, SPACING, CLIP), _ddim,
            ("uniform", "quadratic")),
    Sampler("euler", "Euler's method on the probability-flow ODE, 20 steps", (STEPS, SPACING, CLIP),
            _ode_sampler("euler"), ("karras", "uniform")),
    Sampler("heun", "Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1), "
                    "20 steps = 39 evaluations", (STEPS, SPACING, CLIP), _ode_sampler("heun"), ("karras", "uniform")),
    Sampler("dpm++2m", "DPM-Solver++(2M) (Lu et al. 2022), 20 steps = 20 evaluations", (STEPS, SPACING, CLIP),
            _dpmpp_2m, ("karras", "uniform")),
)}


# --- flow matching -------------------------------------------------------------------------------------------
def _velocity(model_fn: ModelFn) -> Field:
    """v(x, t) at one time t for the whole batch."""
    return lambda x, t: model_fn(x, torch.full((x.shape[0],), t, device=x.device))


def _flow_sampler(method: str):
    def run(flow, model_fn, noise, generator, progress, trajectory, steps: int = 20):
        grid = [float(v) for v in np.linspace(1.0, 0.0, steps + 1)]
        return solve_ode(method, _velocity(model_fn), noise, grid, progress=progress, trajectory=trajectory)
    return run


def flow_invert(model_fn: ModelFn, x0: torch.Tensor, steps: int = 20, method: str = "heun",
                progress: bool = False) -> torch.Tensor:
    """The flow's deterministic encoder: dx/dt = v(x, t) integrated forwards, from the data at t = 0 to the noise
    at t = 1, on the evenly spaced times its samplers visit backwards."""
    grid = [float(v) for v in np.linspace(0.0, 1.0, steps + 1)]
    return solve_ode(method, _velocity(model_fn), x0, grid, progress=progress)


FLOW_SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("euler", "Euler's method on dx/dt = v(x, t), 20 steps", (STEPS,), _flow_sampler("euler")),
    Sampler("heun", "Heun's 2nd-order method, 20 steps = 40 evaluations", (STEPS,), _flow_sampler("heun")),
    Sampler("midpoint", "the midpoint method, 20 steps = 40 evaluations", (STEPS,), _flow_sampler("midpoint")),
)}


def sampler_choice(samplers: dict[str, Sampler], default: str) -> Option:
    """The family's --sampler option over its samplers."""
    return Option("sampler", str, f"sampler (default {default}): " + "; ".join(
        f"{s.name}: {s.help}" for s in samplers.values()), choices=tuple(samplers))


def get_sampler(samplers: dict[str, Sampler], name: str, family: str) -> Sampler:
    if name not in samplers:
        raise ConfigError(f"unknown sampler '{name}' for the {family} family; choose one of: "
                          f"{', '.join(samplers)}.")
    return samplers[name]
