"""The GAN's theory by quadrature on one-dimensional densities (exercises 14.4, 14.13)."""

import math

import pytest
import torch

from genzoo import theory
from genzoo.checks import grid_mixtures

X, DX, P_DATA, P_G = grid_mixtures()  # p_data: 0.3 N(-2, 0.6^2) + 0.7 N(1.5, 1); p_g: 0.5 N(-1, 1.2^2) + 0.5 N(2.5, 0.5^2)


def test_densities_are_normalised():
    for p in (P_DATA, P_G):
        assert (p.sum() * DX).item() == pytest.approx(1.0, abs=1e-9)


def test_optimal_discriminator_beats_every_perturbation():
    d_star = theory.optimal_discriminator(P_DATA, P_G)
    v_star = theory.gan_value(d_star, P_DATA, P_G, DX)
    g = torch.Generator().manual_seed(0)
    for scale in (0.3, 0.05, 0.001):
        for _ in range(20):  # random smooth perturbations in logit space
            bump = sum(torch.randn((), generator=g, dtype=torch.float64) * torch.exp(-(X - c) ** 2)
                       for c in torch.linspace(-4, 4, 9, dtype=torch.float64))
            d = torch.sigmoid(torch.logit(d_star.clamp(1e-12, 1 - 1e-12)) + scale * bump)
            assert theory.gan_value(d, P_DATA, P_G, DX) < v_star
    # and D* is the pointwise maximiser of a log D + b log(1 - D): a/(a + b)
    a, b = torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    grid = torch.linspace(1e-4, 1 - 1e-4, 100001, dtype=torch.float64)
    best = grid[torch.argmax(a * torch.log(grid) + b * torch.log1p(-grid))]
    assert best.item() == pytest.approx((a / (a + b)).item(), abs=1e-4)


def test_value_at_the_optimum_is_minus_two_log_two_plus_twice_the_jsd():
    v_star = theory.gan_value(theory.optimal_discriminator(P_DATA, P_G), P_DATA, P_G, DX)
    closed = theory.optimal_gan_value(P_DATA, P_G, DX)
    assert v_star.item() == pytest.approx(closed.item(), abs=1e-9)
    jsd = theory.jensen_shannon(P_DATA, P_G, DX)
    assert 0 < jsd.item() < math.log(2)


def test_equilibrium_when_the_generator_matches_the_data():
    d_star = theory.optimal_discriminator(P_DATA, P_DATA.clone())
    assert torch.allclose(d_star, torch.full_like(d_star, 0.5))  # D* = 1/2 everywhere (14.4)
    v = theory.gan_value(d_star, P_DATA, P_DATA, DX)
    assert v.item() == pytest.approx(-2 * math.log(2), abs=1e-9)  # V = -2 log 2
    assert theory.jensen_shannon(P_DATA, P_DATA, DX).item() == pytest.approx(0.0, abs=1e-12)


def test_jsd_of_disjoint_supports_is_log_two():
    p = torch.where(X < 0, 1.0 / 12.0, 0.0).double()
    q = torch.where(X >= 0, 1.0 / 12.0, 0.0).double()
    assert theory.jensen_shannon(p, q, DX).item() == pytest.approx(math.log(2), abs=1e-3)
    assert theory.optimal_gan_value(p, q, DX).item() == pytest.approx(0.0, abs=2e-3)  # the optimal D is perfect
