"""The closed forms of genzoo.theory against Monte Carlo and independent computations."""

import math

import pytest
import torch

from genzoo import theory


def _random_gaussians(n=64, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, dtype=torch.float64) * s for s in (1.0, 0.7, 1.0, 0.7)]


def test_gaussian_kl_matches_the_textbook_formula_and_torch_distributions():
    mu1, lv1, mu2, lv2 = _random_gaussians()
    kl = theory.gaussian_kl(mu1, lv1, mu2, lv2)
    s1, s2 = torch.exp(0.5 * lv1), torch.exp(0.5 * lv2)
    # exercise 14.12, written exactly as the chapter states it
    textbook = torch.log(s2 / s1) + (s1 ** 2 + (mu1 - mu2) ** 2) / (2 * s2 ** 2) - 0.5
    assert torch.allclose(kl, textbook, rtol=1e-12, atol=1e-12)
    independent = torch.distributions.kl_divergence(torch.distributions.Normal(mu1, s1), torch.distributions.Normal(mu2, s2))
    assert torch.allclose(kl, independent, rtol=1e-10, atol=1e-12)


def test_gaussian_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(1)
    mu1, lv1 = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.2, -0.5, 0.1], dtype=torch.float64)
    mu2, lv2 = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), torch.tensor([0.0, 0.3, -0.4], dtype=torch.float64)
    x = mu1 + torch.exp(0.5 * lv1) * torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    log_ratio = (theory.gaussian_log_prob(x, mu1, lv1) - theory.gaussian_log_prob(x, mu2, lv2)).sum(-1)
    mc, se = log_ratio.mean(), log_ratio.std() / math.sqrt(len(log_ratio))
    exact = theory.gaussian_kl(mu1, lv1, mu2, lv2).sum()
    assert abs(mc - exact) < 5 * se, (mc.item(), exact.item(), se.item())


def test_kl_is_zero_only_for_equal_gaussians_and_positive_otherwise():
    mu1, lv1, mu2, lv2 = _random_gaussians()
    assert torch.all(theory.gaussian_kl(mu1, lv1, mu2, lv2) > 0)
    assert torch.allclose(theory.gaussian_kl(mu1, lv1, mu1, lv1), torch.zeros_like(mu1))


@pytest.mark.parametrize("var", [0.25, 1.0, 3.0])
def test_equal_variance_kl_is_squared_distance_over_two_sigma_squared(var):
    mu1, _, mu2, _ = _random_gaussians()
    lv = torch.full_like(mu1, math.log(var))
    general = theory.sum_except_batch(theory.gaussian_kl(mu1, lv, mu2, lv))
    reduced = theory.gaussian_kl_equal_variance(mu1, mu2, var)  # exercise 14.19
    by_hand = ((mu1 - mu2) ** 2).sum(-1) / (2 * var)
    assert torch.allclose(general, reduced, rtol=1e-12) and torch.allclose(reduced, by_hand, rtol=1e-12)


def test_log_densities_against_torch_distributions():
    x, mu, lv, _ = _random_gaussians()
    normal = torch.distributions.Normal(mu, torch.exp(0.5 * lv))
    assert torch.allclose(theory.gaussian_log_prob(x, mu, lv), normal.log_prob(x), atol=1e-12)
    assert torch.allclose(theory.standard_normal_log_prob(x), torch.distributions.Normal(0.0, 1.0).log_prob(x), atol=1e-12)
    logits = torch.tensor([-800.0, -3.0, 0.0, 2.0, 800.0], dtype=torch.float64)
    for value in (0.0, 1.0):
        x = torch.full_like(logits, value)
        lp = theory.bernoulli_log_prob(x, logits)
        assert torch.all(torch.isfinite(lp))
        expected = torch.nn.functional.logsigmoid(logits if value else -logits)
        assert torch.allclose(lp, expected, atol=1e-12)


def test_log_mean_exp_is_stable():
    x = torch.tensor([[1000.0, 1000.0], [-1000.0, -1001.0]], dtype=torch.float64)
    out = theory.log_mean_exp(x, dim=1)
    assert torch.allclose(out, torch.tensor([1000.0, -1000.0 + math.log((1 + math.exp(-1)) / 2)], dtype=torch.float64))
    small = torch.randn(4, 7, dtype=torch.float64)
    assert torch.allclose(theory.log_mean_exp(small, 1), small.exp().mean(1).log())


def test_bits_per_dim_of_a_uniform_8_bit_model_is_8():
    dims = 784
    assert theory.nats_to_bits_per_dim(dims * 8 * math.log(2), dims) == pytest.approx(8.0)


def test_interpolation_endpoints_and_slerp_norms():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    z2 = z2 / z2.norm(dim=1, keepdim=True) * z1.norm(dim=1, keepdim=True)  # same radius
    t = torch.linspace(0, 1, 7)
    for f in (theory.lerp, theory.slerp):
        path = f(z1, z2, t)
        assert path.shape == (3, 7, 16)
        assert torch.allclose(path[:, 0], z1, atol=1e-5) and torch.allclose(path[:, -1], z2, atol=1e-5)
    norms = theory.slerp(z1, z2, t).norm(dim=-1)
    assert torch.allclose(norms, z1.norm(dim=1, keepdim=True).expand(3, 7), rtol=1e-4)  # stays on the sphere
    same = theory.slerp(z1, z1.clone(), t)  # parallel: no division by zero
    assert torch.all(torch.isfinite(same)) and torch.allclose(same, z1[:, None].expand(3, 7, 16), atol=1e-5)


def test_the_discretised_logistic_is_a_distribution_on_256_values():
    torch.manual_seed(0)
    mean = torch.randn(1, 50, dtype=torch.float64)
    log_scale = torch.randn(1, 50, dtype=torch.float64) - 2.5  # sharp and broad ones
    x = torch.arange(256, dtype=torch.float64)[:, None].expand(256, 50)
    log_p = theory.discretized_logistic_log_prob(x, mean, log_scale)
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(50, dtype=torch.float64), rtol=0, atol=1e-12)
    # against the difference of the logistic's CDF at the bin edges, computed directly where it does not cancel
    cdf = lambda v: torch.sigmoid((v - mean) / log_scale.exp())
    centre = x / 127.5 - 1
    direct = (torch.where(x > 254.5, 1.0, cdf(centre + 1 / 255)) - torch.where(x < 0.5, 0.0, cdf(centre - 1 / 255)))
    ok = direct > 1e-6
    torch.testing.assert_close(log_p[ok], direct[ok].log(), rtol=1e-7, atol=1e-9)
    assert torch.isfinite(log_p).all() and log_p.min() < -100  # far tails stay finite
