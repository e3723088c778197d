"""FID and KID as pure functions: closed forms, an independent formula, invariants, and unbiasedness."""

import itertools
import math

import pytest
import torch

from genzoo import quality


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    s1, s2 = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64)
    exact = (mu1 - mu2).square().sum() + (s1 - s2).square().sum()  # W2^2 of commuting Gaussians
    assert quality.frechet_distance(mu1, torch.diag(s1 ** 2), mu2, torch.diag(s2 ** 2)) == pytest.approx(exact.item(), rel=1e-10)


def test_frechet_distance_matches_the_2x2_trace_formula_for_non_commuting_covariances():
    # for 2 x 2 matrices, tr sqrt(C1 C2) = sqrt(tr(C1 C2) + 2 sqrt(det C1 det C2)): an independent computation
    c1 = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([2.0, -1.0], dtype=torch.float64)
    tr_sqrt = math.sqrt((c1 @ c2).trace().item() + 2 * math.sqrt(c1.det().item() * c2.det().item()))
    exact = (mu1 - mu2).square().sum().item() + c1.trace().item() + c2.trace().item() - 2 * tr_sqrt
    assert quality.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(exact, rel=1e-10)
    assert quality.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(exact, rel=1e-10)


def test_fid_is_zero_for_identical_sets_and_invariant_to_a_rotation_of_both():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(500, 16, generator=g, dtype=torch.float64) @ torch.randn(16, 16, generator=g, dtype=torch.float64)
    b = torch.randn(400, 16, generator=g, dtype=torch.float64) * 2 + 1
    assert quality.fid(a, a) == pytest.approx(0.0, abs=1e-8)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    assert quality.fid(a @ q, b @ q) == pytest.approx(quality.fid(a, b), rel=1e-8)


def test_fid_is_finite_and_non_negative_for_rank_deficient_covariances():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(20, 64, generator=g, dtype=torch.float64)  # fewer samples than dimensions: singular covariance
    b = torch.randn(20, 64, generator=g, dtype=torch.float64) + 0.5
    d = quality.fid(a, b)
    assert math.isfinite(d) and d > 0
    assert quality.fid(a, a) == pytest.approx(0.0, abs=1e-6)


def _exact_mmd2(a, b):
    """MMD^2 between the uniform laws on the rows of a and of b, by enumerating every pair."""
    k = quality.polynomial_kernel
    return (k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()).item()


def test_mmd2_estimate_is_unbiased_on_a_case_with_a_known_answer():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, 3, generator=g, dtype=torch.float64) + 0.3
    exact = _exact_mmd2(a, b)
    est, biased = [], []
    for _ in range(4000):  # tiny samples (m = n = 6), drawn with replacement, where bias would show
        x = a[torch.randint(len(a), (6,), generator=g)]
        y = b[torch.randint(len(b), (6,), generator=g)]
        est.append(quality.mmd2_unbiased(x, y))
        biased.append(_exact_mmd2(x, y))  # the V-statistic: includes the diagonal, so biased upwards
    est, biased = torch.tensor(est), torch.tensor(biased)
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 4 * se
    assert biased.mean().item() - exact > 10 * se  # the check would catch a biased estimator


def test_kid_is_near_zero_for_one_law_and_positive_for_two_with_its_standard_error():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(3000, 8, generator=g), torch.randn(3000, 8, generator=g)
    same = quality.kid(x, y, block=500, generator=g)
    assert same["kid_blocks"] == 6 and same["kid_block_size"] == 500
    assert abs(same["kid"]) < 4 * same["kid_stderr"]
    other = quality.kid(x, y + 0.5, block=500, generator=g)
    assert other["kid"] > 10 * other["kid_stderr"] > 0


def test_kid_blocks_use_each_row_at_most_once():
    x = torch.arange(10.0)[:, None].repeat(1, 2)  # row i is (i, i)
    seen = []
    original = quality.mmd2_unbiased
    try:
        quality.mmd2_unbiased = lambda a, b: seen.append(a[:, 0].tolist()) or 0.0
        quality.kid(x, x, block=3)
    finally:
        quality.mmd2_unbiased = original
    rows = list(itertools.chain(*seen))
    assert len(seen) == 3 and len(rows) == len(set(rows)) == 9
