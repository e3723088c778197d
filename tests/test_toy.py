"""The 2-D toy data and the scores against its known density."""

import math

import pytest
import torch

from genzoo.data import load_dataset
from genzoo.data.toy import TOY_DATASETS, grid, grid_kl, mode_metrics

RING = TOY_DATASETS["toy-ring"]


def test_ring_data_is_fixed_and_labelled_by_mode():
    a, b = load_dataset("toy-ring"), load_dataset("toy-ring")
    assert torch.equal(a.train.images, b.train.images) and a.train.images.shape == (55000, 2)
    assert (len(a.val), len(a.test)) == (5000, 10000)
    dist = (a.test.images.double() - RING.means()[a.test.labels]).norm(dim=1)
    assert dist.mean().item() == pytest.approx(RING.std * math.sqrt(math.pi / 2), rel=0.03)  # Rayleigh mean


def test_the_density_integrates_to_one():
    pts, cell = grid(RING, 1001)
    assert (RING.log_density(pts).exp().sum() * cell).item() == pytest.approx(1.0, abs=1e-6)


def test_mode_metrics_of_the_data_itself_and_of_a_collapsed_sampler():
    x = load_dataset("toy-ring").test.images
    m = mode_metrics(RING, x)
    assert m["modes_covered"] == 8
    assert m["high_quality_share"] == pytest.approx(1 - math.exp(-4.5), abs=0.004)  # P(|N_2(0, s^2 I)| <= 3s)
    one_mode = RING.means()[3].float() + 0.01 * torch.randn(1000, 2)
    assert mode_metrics(RING, one_mode)["modes_covered"] == 1
    far = torch.zeros(1000, 2)
    assert mode_metrics(RING, far) == {**mode_metrics(RING, far), "modes_covered": 0, "high_quality_share": 0.0}


def test_grid_kl_is_zero_for_the_true_density_whatever_its_constant():
    out = grid_kl(RING, lambda p: RING.log_density(p) + 7.5)  # unnormalised: log Z = 7.5
    assert abs(out["kl_data_to_model_nats"]) < 1e-6 and out["log_z_grid"] == pytest.approx(7.5, abs=1e-6)
    # a model with the right modes but twice the width: KL of a 2-D Gaussian, 2 log 2 + 1/4 - 1 per mode
    wide = grid_kl(RING, lambda p: torch.logsumexp(-0.5 * torch.cdist(p, RING.means()) ** 2 / (2 * RING.std) ** 2, 1))
    assert wide["kl_data_to_model_nats"] == pytest.approx(2 * math.log(2) + 0.25 - 1, abs=1e-3)
