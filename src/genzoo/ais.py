"""Annealed importance sampling (Neal 2001) of a normalising constant, for unnormalised models.

To estimate Z = ∫_B exp(log_f(x)) dx over a box B = [low, high]^D, anneal from the uniform density p_0 on B
through the geometric path

    log f_k(x) = beta_k log_f(x) + (1 - beta_k) log p_0(x),      0 = beta_0 < beta_1 < ... < beta_K = 1,

moving each of M chains with Metropolis-adjusted Langevin steps (MALA, exact for f_k: proposals that leave the
box are rejected; the step is step_size / sqrt(beta_k), as f_k is flatter while beta_k is small) and
accumulating the log-weights

    log w = sum_k (beta_k - beta_{k-1}) (log_f(x_{k-1}) - log p_0(x_{k-1})).

The mean of w is an unbiased estimate of Z; log of the mean is biased low, by less as the weights' spread
shrinks. The standard error of log Z-hat is given by the delta method, sd(w) / (sqrt(M) mean(w)), together with
the effective sample size of the weights (when it is a small fraction of M, the estimate is not to be trusted).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def geometric_betas(n: int, power: float = 4.0) -> torch.Tensor:
    """n + 1 inverse temperatures from 0 to 1, dense near 0 (where the path changes fastest): (k / n)^power."""
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64) ** power


def _log_f_and_grad(log_f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        value = log_f(x)
        (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach().double(), grad.detach()


def ais_log_z(log_f: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], low: float, high: float,
              chains: int = 256, betas: torch.Tensor | None = None, mcmc_steps: int = 1, step_size: float = 0.01,
              generator: torch.Generator | None = None, device: torch.device | None = None) -> dict:
    """log Z of exp(log_f) on the box [low, high]^shape, by AIS with ``chains`` chains.

    ``log_f`` maps a batch [M x *shape] to log-densities [M]. Returns log_z, its standard error, the effective
    sample size of the weights, and MALA's acceptance rate.
    """
    betas = geometric_betas(1000) if betas is None else betas.double()
    d = math.prod(shape)
    log_p0 = -d * math.log(high - low)  # the uniform density on the box
    x = low + (high - low) * torch.rand((chains, *shape), generator=generator, device=device)
    lf, grad = _log_f_and_grad(log_f, x)
    log_w = torch.zeros(chains, dtype=torch.float64, device=x.device)
    accepted = proposed = 0

    def inside(z):
        return ((z >= low) & (z <= high)).reshape(len(z), -1).all(1)

    for k in range(1, len(betas)):
        b_prev, b = betas[k - 1].item(), betas[k].item()
        log_w += (b - b_prev) * (lf - log_p0)
        h = min(step_size / math.sqrt(b), (high - low) / 4)  # f_k is flatter by 1/b: wider steps while b is small
        for _ in range(mcmc_steps):  # MALA targeting f_k ∝ exp(b log_f) on the box (p_0 is flat inside it)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            y = x + 0.5 * h ** 2 * b * grad + h * noise
            lf_y, grad_y = _log_f_and_grad(log_f, y)
            fwd = (y - x - 0.5 * h ** 2 * b * grad).reshape(chains, -1).double().square().sum(1)
            bwd = (x - y - 0.5 * h ** 2 * b * grad_y).reshape(chains, -1).double().square().sum(1)
            log_alpha = b * (lf_y - lf) - (bwd - fwd) / (2 * h ** 2)
            u = torch.rand(chains, generator=generator, device=x.device, dtype=torch.float64)
            accept = inside(y) & (u.log() < log_alpha) & torch.isfinite(lf_y)
            mask = accept.reshape(-1, *[1] * len(shape))
            x, grad = torch.where(mask, y, x), torch.where(mask, grad_y, grad)
            lf = torch.where(accept, lf_y, lf)
            accepted += accept.sum().item()
            proposed += chains
    log_z = torch.logsumexp(log_w, 0).item() - math.log(chains)
    w = (log_w - log_w.max()).exp()
    ess = (w.sum() ** 2 / w.square().sum()).item()
    se = (w.std(unbiased=True) / (math.sqrt(chains) * w.mean())).item() if chains > 1 else float("nan")
    return {"log_z": log_z, "log_z_stderr": se, "ess": ess, "chains": chains, "temperatures": len(betas) - 1,
            "mcmc_steps": mcmc_steps, "acceptance": accepted / max(proposed, 1)}
