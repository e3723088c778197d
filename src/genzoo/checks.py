"""The chapter's identities as numeric checks: what `genzoo theory` prints, and what tests/test_checks.py runs.

Each check computes a closed-form value and an independent numeric estimate (quadrature, Monte Carlo,
autograd, simulation) and passes when they agree within its tolerance. All run in a few seconds on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from genzoo import theory


@dataclass
class Check:
    exercise: str
    statement: str
    closed_form: float
    estimate: float
    tolerance: float

    @property
    def error(self) -> float:
        return abs(self.closed_form - self.estimate)

    @property
    def passed(self) -> bool:
        return math.isfinite(self.estimate) and self.error <= self.tolerance


def grid_mixtures():
    """(x, dx, p_data, p_g): two Gaussian mixtures tabulated on a grid over [-12, 12], for quadrature."""
    x = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    dx = (x[1] - x[0]).item()

    def mixture(weights, means, stds):
        return sum(w * torch.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                   for w, m, s in zip(weights, means, stds))
    return x, dx, mixture([0.3, 0.7], [-2.0, 1.5], [0.6, 1.0]), mixture([0.5, 0.5], [-1.0, 2.5], [1.2, 0.5])


def check_optimal_discriminator() -> Check:
    x, dx, p_data, p_g = grid_mixtures()
    d_star = theory.optimal_discriminator(p_data, p_g)
    v_star = theory.gan_value(d_star, p_data, p_g, dx).item()
    g = torch.Generator().manual_seed(0)
    best_other = max(theory.gan_value(torch.sigmoid(torch.logit(d_star.clamp(1e-12, 1 - 1e-12))
                                                    + 0.05 * torch.randn((), generator=g, dtype=torch.float64)
                                                    * torch.sin(x * k)), p_data, p_g, dx).item() for k in range(1, 11))
    # closed form: D* is optimal, so no perturbed discriminator may exceed its value (reported as a margin >= 0)
    return Check("14.4", "D*(x) = p_data/(p_data + p_g) maximises V(D, G); margin over 10 perturbed D",
                 0.0, min(0.0, v_star - best_other), 0.0)


def check_gan_value_jsd() -> Check:
    _, dx, p_data, p_g = grid_mixtures()
    v_star = theory.gan_value(theory.optimal_discriminator(p_data, p_g), p_data, p_g, dx).item()
    return Check("14.13", "V(D*, G) = -2 log 2 + 2 JSD(p_data || p_g)",
                 theory.optimal_gan_value(p_data, p_g, dx).item(), v_star, 1e-8)


def check_gan_equilibrium() -> Check:
    _, dx, p_data, _ = grid_mixtures()
    d_star = theory.optimal_discriminator(p_data, p_data)
    return Check("14.4/14.13", "p_g = p_data: D* = 1/2 everywhere and V = -2 log 2",
                 -2 * math.log(2), theory.gan_value(d_star, p_data, p_data, dx).item()
                 + (d_star - 0.5).abs().max().item(), 1e-9)


def _linear_diffusion():
    from genzoo.models.ddpm import GaussianDiffusion, beta_schedule
    return GaussianDiffusion(beta_schedule("linear", 1000)).double()


def check_closed_form_forward_process() -> Check:
    d = _linear_diffusion()
    g = torch.Generator().manual_seed(0)
    x0 = 0.7
    x = torch.full((20000,), x0, dtype=torch.float64)
    for t in range(500):  # simulate q(x_t | x_{t-1}) step by step up to t = 500
        x = torch.sqrt(1 - d.betas[t].double()) * x + torch.sqrt(d.betas[t].double()) * torch.randn(
            x.shape, generator=g, dtype=torch.float64)
    ab = d.alpha_bar64[499].item()
    # compare the simulated variance with the closed form 1 - alpha_bar (and the mean within the same check)
    mean_err = abs(x.mean().item() - math.sqrt(ab) * x0)
    return Check("14.7/14.14", "q(x_t|x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) vs the simulated "
                 "chain at t = 500 (variance; mean error added)", 1 - ab, x.var().item() + mean_err, 0.03)


def check_induction_identity() -> Check:
    from genzoo.models.ddpm import beta_schedule
    b = beta_schedule("linear", 1000)
    a = 1 - b
    ab = torch.cumprod(a, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    worst = (a * (1 - ab_prev) + b - (1 - ab)).abs().max().item()
    return Check("14.7", "alpha_t (1 - alpha_bar_{t-1}) + beta_t = 1 - alpha_bar_t for every t (max error)",
                 0.0, worst, 1e-15)


def check_elbo_linear_gaussian() -> Check:
    """z ~ N(0, 1), x | z ~ N(a z + b, s^2): log p(x) = log N(x; b, a^2 + s^2) and the true posterior is Gaussian."""
    a, b, s2, x = 1.7, 0.3, 0.5, 2.2
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    log_px = theory.gaussian_log_prob(t(x), t(b), t(math.log(a * a + s2))).item()

    def elbo(m, v):  # E_q[log p(x|z)] - KL(q || N(0, 1)) for q = N(m, v), in closed form
        expected = -0.5 * math.log(2 * math.pi * s2) - ((x - a * m - b) ** 2 + a * a * v) / (2 * s2)
        return expected - theory.gaussian_kl(t(m), t(math.log(v)), t(0.0), t(0.0)).item()
    v_post = 1 / (1 + a * a / s2)
    m_post = v_post * a * (x - b) / s2
    gap_other = log_px - elbo(m_post + 0.3, v_post * 1.5)
    return Check("14.11", "ELBO(q) <= log p(x), with equality at the true posterior (linear-Gaussian model); "
                 "estimate = ELBO(q*), plus 0 if another q has a positive gap",
                 log_px, elbo(m_post, v_post) + (0.0 if gap_other > 0 else float("nan")), 1e-9)


def check_gaussian_kl_monte_carlo() -> Check:
    g = torch.Generator().manual_seed(1)
    mu1, lv1, mu2, lv2 = 0.3, 0.2, -0.5, -0.4
    z = mu1 + math.exp(0.5 * lv1) * torch.randn(1_000_000, generator=g, dtype=torch.float64)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    mc = (theory.gaussian_log_prob(z, t(mu1), t(lv1)) - theory.gaussian_log_prob(z, t(mu2), t(lv2))).mean().item()
    return Check("14.12", "KL between Gaussians in closed form vs Monte Carlo (10^6 samples)",
                 theory.gaussian_kl(t(mu1), t(lv1), t(mu2), t(lv2)).item(), mc, 5e-3)


def check_equal_variance_kl() -> Check:
    g = torch.Generator().manual_seed(2)
    mu1, mu2 = torch.randn(1, 10, generator=g, dtype=torch.float64), torch.randn(1, 10, generator=g, dtype=torch.float64)
    var = 0.3
    lv = torch.full_like(mu1, math.log(var))
    return Check("14.19", "equal variances: KL = ||mu1 - mu2||^2 / (2 sigma^2)",
                 (((mu1 - mu2) ** 2).sum() / (2 * var)).item(),
                 theory.sum_except_batch(theory.gaussian_kl(mu1, lv, mu2, lv)).item(), 1e-12)


def check_score_noise() -> Check:
    d = _linear_diffusion()
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    ab = d.alpha_bar64[300]
    xt = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).requires_grad_(True)
    log_q = theory.gaussian_log_prob(xt, ab.sqrt() * x0, torch.log(1 - ab).expand_as(xt)).sum()
    (grad,) = torch.autograd.grad(log_q, xt)
    return Check("14.16", "grad log q(x_t|x_0) = -eps / sqrt(1 - alpha_bar_t) vs autograd (max difference)",
                 0.0, (theory.score_from_noise(eps, ab) - grad).abs().max().item(), 1e-10)


def gaussian_data_denoiser(d, m: float, s: float):
    """The exact eps-prediction E[eps | x_t] when the data are N(m, s^2 I): an analytic stand-in for a network."""
    def fn(xt, t):
        ab = d.alpha_bar64[t].reshape(-1, *([1] * (xt.dim() - 1))).to(xt.dtype)
        return (1 - ab).sqrt() * (xt - ab.sqrt() * m) / (ab * s ** 2 + 1 - ab)
    return fn


def check_ddim_equals_ddpm() -> Check:
    from genzoo.models.ddpm import GaussianDiffusion, beta_schedule
    d = GaussianDiffusion(beta_schedule("linear", 200)).double()
    fn = gaussian_data_denoiser(d, 0.3, 0.5)
    noise = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddpm = d.ddpm_sample(fn, noise, torch.Generator().manual_seed(1), clip=False)
    ddim = d.ddim_sample(fn, noise, list(range(200)), 1.0, torch.Generator().manual_seed(1), clip=False)
    return Check("14.26", "DDIM over all T steps with eta = 1 is ancestral DDPM sampling (same noise; max diff)",
                 0.0, (ddpm - ddim).abs().max().item(), 1e-5)


def check_ddim_deterministic() -> Check:
    from genzoo.models.ddpm import timestep_subsequence
    d = _linear_diffusion()
    fn = gaussian_data_denoiser(d, 0.0, 0.5)
    noise = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tau = timestep_subsequence(1000, 20)
    a = d.ddim_sample(fn, noise, tau, 0.0, torch.Generator().manual_seed(1))
    b = d.ddim_sample(fn, noise, tau, 0.0, torch.Generator().manual_seed(2))
    return Check("14.26", "DDIM with eta = 0 is deterministic (two noise seeds; max difference)",
                 0.0, (a - b).abs().max().item(), 0.0)


def check_coupling_log_det() -> Check:
    from genzoo.models.realnvp import AffineCoupling
    torch.manual_seed(0)
    layer = AffineCoupling(2, "checkerboard", 0, hidden=8, blocks=1).double()
    for p in layer.parameters():  # a fresh coupling is the identity; randomise it so the check has teeth
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    _, log_det = layer(x)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(x.shape))[0].reshape(-1), x.reshape(-1))
    return Check("14.17", "affine coupling: log|det J| = sum_i s_i(x_a) equals log|det| of the autograd Jacobian",
                 torch.linalg.slogdet(jac)[1].item(), log_det.item(), 1e-9)


CHECKS: list[Callable[[], Check]] = [
    check_optimal_discriminator, check_gan_value_jsd, check_gan_equilibrium,
    check_closed_form_forward_process, check_induction_identity,
    check_elbo_linear_gaussian,
    check_gaussian_kl_monte_carlo, check_equal_variance_kl,
    check_score_noise,
    check_ddim_equals_ddpm, check_ddim_deterministic,
    check_coupling_log_det,
]


def run_all() -> list[Check]:
    return [check() for check in CHECKS]
