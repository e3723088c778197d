"""Annealed importance sampling against normalising constants known in closed form or by quadrature."""

import math

import pytest
import torch

from genzoo.ais import ais_log_z, geometric_betas


def test_geometric_betas_run_from_zero_to_one_increasing():
    b = geometric_betas(50)
    assert b[0] == 0 and b[-1] == 1 and (b.diff() > 0).all() and len(b) == 51


@pytest.mark.parametrize("d,s", [(2, 0.3), (10, 0.2)])
def test_ais_finds_the_log_normaliser_of_a_gaussian(d, s):
    # exp(-|x|^2 / 2 s^2) on [-3, 3]^d: the box holds all but ~1e-40 of the mass, so log Z = d/2 log(2 pi s^2)
    exact = 0.5 * d * math.log(2 * math.pi * s * s)
    out = ais_log_z(lambda x: -x.square().sum(1) / (2 * s * s), (d,), -3.0, 3.0, chains=200,
                    betas=geometric_betas(1000), mcmc_steps=2, step_size=0.5 * s,
                    generator=torch.Generator().manual_seed(0))
    assert abs(out["log_z"] - exact) < 4 * out["log_z_stderr"] < 0.3
    assert out["ess"] > 0.3 * out["chains"] and 0.3 < out["acceptance"] < 1.0


def test_ais_matches_quadrature_on_a_two_dimensional_mixture():
    centres = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.2]])

    def log_f(x):  # an unnormalised mixture of three narrow bumps of different heights
        d2 = (x[:, None, :] - centres).square().sum(-1)
        return torch.logsumexp(-d2 / (2 * 0.05 ** 2) + torch.tensor([0.0, 1.0, -0.5]), dim=1)

    axis = torch.linspace(-2, 2, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    quadrature = (torch.logsumexp(log_f(grid), 0) + 2 * math.log(axis[1] - axis[0])).item()
    out = ais_log_z(log_f, (2,), -2.0, 2.0, chains=300, betas=geometric_betas(400), mcmc_steps=2,
                    step_size=0.03, generator=torch.Generator().manual_seed(1))
    assert abs(out["log_z"] - quadrature) < max(4 * out["log_z_stderr"], 0.02)
    assert out["log_z_stderr"] < 0.1


def test_ais_without_annealing_is_plain_importance_sampling_from_the_box():
    # with betas (0, 1) the weight of a chain is f(x_0) / p_0(x_0) with x_0 uniform: a check on the bookkeeping
    g = torch.Generator().manual_seed(2)
    out = ais_log_z(lambda x: 0.0 * x.sum(1), (3,), 0.0, 2.0, chains=50, betas=torch.tensor([0.0, 1.0]),
                    generator=g)
    assert out["log_z"] == pytest.approx(3 * math.log(2.0), abs=1e-12) and out["log_z_stderr"] == 0
