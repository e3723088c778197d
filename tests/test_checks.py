"""`genzoo theory`: every identity passes, and a check really fails when an identity is broken."""

import math

import pytest
import torch

from genzoo import checks, theory


@pytest.mark.parametrize("check", checks.CHECKS, ids=lambda c: c.__name__)
def test_every_identity_holds(check):
    result = check()
    assert result.passed, (result.exercise, result.closed_form, result.estimate)


def test_a_wrong_kl_formula_is_caught(monkeypatch):
    wrong = lambda mu1, lv1, mu2, lv2: 0.5 * ((mu1 - mu2) ** 2)  # noqa: E731  (forgets the variances)
    monkeypatch.setattr(theory, "gaussian_kl", wrong)
    assert not checks.check_gaussian_kl_monte_carlo().passed
    assert not checks.check_elbo_linear_gaussian().passed


def test_a_wrong_discriminator_is_caught(monkeypatch):
    monkeypatch.setattr(theory, "optimal_discriminator", lambda p, q: p / (p + 2 * q))  # wrong, even at p = q
    assert not checks.check_gan_value_jsd().passed
    assert not checks.check_gan_equilibrium().passed


def test_a_coupling_that_forgets_the_scale_in_its_log_det_is_caught(monkeypatch):
    from genzoo.models.realnvp import AffineCoupling
    forward = AffineCoupling.forward
    monkeypatch.setattr(AffineCoupling, "forward", lambda self, x: (forward(self, x)[0], torch.zeros(x.shape[0])))
    assert not checks.check_coupling_log_det().passed


def test_the_command_prints_the_table_and_its_status(run_cli, monkeypatch):
    code, out, _ = run_cli("theory")
    assert code == 0 and f"{len(checks.CHECKS)} passed, 0 failed" in out and "14.26" in out
    monkeypatch.setattr(theory, "score_from_noise", lambda eps, ab: eps / torch.sqrt(1 - ab))  # sign flipped
    code, out, _ = run_cli("theory")
    assert code == 1 and "FAIL" in out and "1 failed" in out
    assert math.isfinite(checks.check_score_noise().error)
