"""The samplers against an analytic denoiser: Gaussian data, where the probability-flow ODE has a closed-form
solution, so each solver's error can be measured and its order read off as the steps grow."""

import math

import numpy as np
import pytest
import torch

from genzoo.errors import ConfigError
from genzoo.models.ddpm import GaussianDiffusion, beta_schedule
from genzoo.samplers import DIFFUSION_SAMPLERS, FLOW_SAMPLERS, diffusion_sigmas, karras_sigmas

MU, S = 0.3, 0.5  # the data: every pixel N(MU, S^2), independently


def gaussian_eps_model(d: GaussianDiffusion, mu: float = MU):
    """The exact eps-prediction E[eps | x_t] for Gaussian data, at continuous t (sigma interpolated in log sigma,
    the inverse of the samplers' t_from_sigma)."""
    log_sigmas = np.log(np.array(d.sigmas64))

    def model_fn(xt, t):
        sigma = torch.tensor(np.exp(np.interp(t.double().numpy(), np.arange(d.timesteps), log_sigmas)),
                             dtype=xt.dtype).reshape(-1, *([1] * (xt.dim() - 1)))
        a = 1.0 / (1.0 + sigma ** 2)  # alpha_bar
        x0 = mu + a.sqrt() * S ** 2 / (a * S ** 2 + 1 - a) * (xt - a.sqrt() * mu)  # E[x_0 | x_t]
        return (xt - a.sqrt() * x0) / (1 - a).sqrt()
    return model_fn


def exact_solution(noise: torch.Tensor, sigma_max: float, sigma_min: float) -> torch.Tensor:
    """The ODE dx~/dsigma = (x~ - D) / sigma from x~ = noise * sqrt(1 + sigma_max^2) at sigma_max down to sigma_min,
    where x~ - MU scales as sqrt(S^2 + sigma^2), followed by the samplers' common last step x = D(x~; sigma_min)."""
    x = noise * math.sqrt(1 + sigma_max ** 2)
    x = MU + (x - MU) * math.sqrt(S ** 2 + sigma_min ** 2) / math.sqrt(S ** 2 + sigma_max ** 2)
    return MU + S ** 2 / (S ** 2 + sigma_min ** 2) * (x - MU)


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(beta_schedule("linear", 1000))


def errors(diffusion, sampler, steps_list, spacing="karras"):
    noise = torch.randn((256, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma_max, sigma_min = diffusion.sigmas64[-1], diffusion.sigmas64[0]
    exact = exact_solution(noise, sigma_max, sigma_min)
    out = []
    for steps in steps_list:
        x = DIFFUSION_SAMPLERS[sampler](diffusion, gaussian_eps_model(diffusion), noise, steps=steps, spacing=spacing,
                                        clip=False)
        out.append((x - exact).abs().max().item())
    return out


@pytest.mark.parametrize("sampler, order", [("euler", 1), ("heun", 2), ("dpm++2m", 2)])
def test_ode_solvers_converge_at_their_order(diffusion, sampler, order):
    steps = [10, 20, 40, 80]
    err = errors(diffusion, sampler, steps)
    assert all(b < a for a, b in zip(err, err[1:])), err  # error shrinks with every doubling
    slope = -np.polyfit(np.log(steps[1:]), np.log(err[1:]), 1)[0]
    assert order - 0.35 < slope < order + 0.6, (sampler, slope, err)  # a first-order method is not better


def test_second_order_solvers_beat_euler_at_the_same_evaluations(diffusion):
    euler_40, euler_80 = errors(diffusion, "euler", [40, 80])
    assert errors(diffusion, "heun", [40])[0] < euler_80 / 3  # 79 evaluations against 80
    assert errors(diffusion, "dpm++2m", [40])[0] < euler_40 / 5  # 40 against 40


def test_ddim_at_eta_0_is_euler_on_the_probability_flow_ode(diffusion):
    """Song et al. 2021 (section 4.3): DDIM is Euler's method on the ODE in x~ = x / sqrt(alpha_bar) and sigma."""
    noise = torch.randn((8, 1, 3, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fn = gaussian_eps_model(diffusion)
    ddim = DIFFUSION_SAMPLERS["ddim"](diffusion, fn, noise, steps=17, eta=0.0, clip=False)
    euler = DIFFUSION_SAMPLERS["euler"](diffusion, fn, noise, steps=17, spacing="uniform", clip=False)
    torch.testing.assert_close(ddim, euler, rtol=1e-5, atol=1e-6)  # DDIM reads float32 tables


def test_ancestral_sampling_on_a_subsequence_is_ddim_with_eta_1(diffusion):
    noise = torch.randn((8, 1, 3, 3), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fn = gaussian_eps_model(diffusion)
    a = DIFFUSION_SAMPLERS["ddpm"](diffusion, fn, noise, torch.Generator().manual_seed(3), steps=50, clip=False)
    b = DIFFUSION_SAMPLERS["ddim"](diffusion, fn, noise, torch.Generator().manual_seed(3), steps=50, eta=1.0,
                                   clip=False)
    assert torch.equal(a, b)


def test_karras_sigmas_follow_eq_5():
    s = karras_sigmas(0.002, 80.0, 18)
    assert s[0] == pytest.approx(80.0) and s[-1] == pytest.approx(0.002)
    inv = np.array(s) ** (1 / 7)  # evenly spaced in sigma^(1/rho)
    assert np.allclose(np.diff(inv), np.diff(inv)[0])


def test_sampler_options_are_checked_once_each(diffusion):
    noise = torch.zeros((1, 1, 2, 2))
    fn = gaussian_eps_model(diffusion)
    with pytest.raises(ConfigError, match="the dpm\\+\\+2m sampler takes no --eta option"):
        DIFFUSION_SAMPLERS["dpm++2m"](diffusion, fn, noise, eta=0.5)
    with pytest.raises(ConfigError, match="--steps must be between 1 and the 1000 training timesteps; got 1001"):
        diffusion_sigmas(diffusion, 1001, "karras")
    with pytest.raises(ConfigError, match="--steps must be positive"):
        DIFFUSION_SAMPLERS["heun"](diffusion, fn, noise, steps=0)
    with pytest.raises(ConfigError, match="the midpoint sampler takes no --spacing option"):
        FLOW_SAMPLERS["midpoint"](None, fn, noise, spacing="uniform")


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_flow_solvers_converge_at_least_at_their_order(method, order):
    """dx/dt = v(x, t) with the optimal velocity of Gaussian data on the linear path x_t = (1 - t) x_0 + t eps:
    x_t ~ N((1 - t) MU, (1 - t)^2 S^2 + t^2), and v = E[eps - x_0 | x_t]; the flow maps x_1 to
    MU + (x_1 - 0) * S (each point keeps its quantile)."""
    def v(x, t):
        t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        var = (1 - t) ** 2 * S ** 2 + t ** 2
        z = (x - (1 - t) * MU) / var.sqrt()
        d_mean, d_std = -MU, ((t - (1 - t) * S ** 2) / var.sqrt())  # d/dt of the mean and of the std
        return d_mean + d_std * z
    noise = torch.randn((256, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU + S * noise
    steps = [8, 16, 32, 64]
    err = [(FLOW_SAMPLERS[method](None, v, noise, steps=n) - exact).abs().max().item() for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(err), 1)[0]
    assert slope > order - 0.3, (method, slope, err)  # (the midpoint rule reaches 3 on this linear field)


def test_the_probability_flow_ode_likelihood_of_gaussian_data(diffusion):
    """With the exact denoiser of N(0, S^2) data, the ODE from sigma_min gives the density of the data blurred by
    sigma_min, N(0, S^2 + sigma_min^2), at the starting point (the prior N(0, 1 + sigma_max^2) differs from the
    diffused data N(0, S^2 + sigma_max^2) by O(1 / sigma_max^2); with a mean MU it would differ by O(MU / sigma_max),
    about 2e-3 nats per dimension here)."""
    x = S * torch.randn((16, 1, 2, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    got = diffusion.ode_log_likelihood(gaussian_eps_model(diffusion, mu=0.0), x, steps=60, probes=0)
    var = S ** 2 + diffusion.sigmas64[0] ** 2
    exact = (-0.5 * x ** 2 / var - 0.5 * math.log(2 * math.pi * var)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(got, exact, rtol=0, atol=2e-3)
