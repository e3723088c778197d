"""Gaussian mixtures (genzoo.mixture): EM recovers a known mixture, the density is the mixture's by an independent
computation, sampling has the mixture's moments; and the VAE's fitted sampling prior."""

import math

import pytest
import torch

from conftest import tiny_vae_config
from genzoo import mixture, runs
from genzoo.evaluate import eval_tensor
from genzoo.trainer import train_run

TRUE = {"weights": torch.tensor([0.3, 0.7]), "means": torch.tensor([[-3.0, 0.0], [2.0, 1.0]]),
        "scale_tril": torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.7, 0.0], [-0.3, 1.2]]])}


def independent_log_prob(mix, z):
    """log sum_k w_k N(z; m_k, L_k L_k^T), written out with the covariance's inverse and determinant."""
    terms = []
    for w, m, L in zip(mix["weights"].double(), mix["means"].double(), mix["scale_tril"].double()):
        cov = L @ L.T
        diff = z.double() - m
        maha = (diff @ torch.linalg.inv(cov) * diff).sum(1)
        terms.append(torch.log(w) - 0.5 * (maha + torch.logdet(cov) + z.shape[1] * math.log(2 * math.pi)))
    return torch.logsumexp(torch.stack(terms), 0)


def test_the_density_is_the_mixtures_and_the_standard_mixture_is_n01():
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(mixture.log_prob(TRUE, z).double(), independent_log_prob(TRUE, z), rtol=1e-5, atol=1e-5)
    n01 = -0.5 * (z ** 2).sum(1) - math.log(2 * math.pi)
    torch.testing.assert_close(mixture.log_prob(mixture.standard(3, 2), z), n01, rtol=1e-5, atol=1e-5)


def test_samples_have_the_mixtures_mean_and_covariance():
    z = mixture.sample(TRUE, 200_000, torch.Generator().manual_seed(1))
    w, m, L = TRUE["weights"], TRUE["means"], TRUE["scale_tril"]
    mean = (w[:, None] * m).sum(0)
    cov = sum(wk * (Lk @ Lk.T + torch.outer(mk - mean, mk - mean)) for wk, mk, Lk in zip(w, m, L))
    torch.testing.assert_close(z.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), cov, atol=0.05, rtol=0)


def test_em_recovers_a_known_mixture_and_beats_one_gaussian():
    z = mixture.sample(TRUE, 20_000, torch.Generator().manual_seed(2))
    fit = mixture.fit(z, 2, seed=0)
    order = fit["means"][:, 0].argsort()  # components come back in any order
    torch.testing.assert_close(fit["weights"][order], TRUE["weights"], atol=0.02, rtol=0)
    torch.testing.assert_close(fit["means"][order], TRUE["means"], atol=0.05, rtol=0)
    covs = lambda L: L @ L.transpose(1, 2)
    torch.testing.assert_close(covs(fit["scale_tril"][order]), covs(TRUE["scale_tril"]), atol=0.06, rtol=0)
    one = mixture.fit(z, 1)
    torch.testing.assert_close(one["means"][0], z.mean(0))  # one component: the points' mean and covariance
    assert mixture.log_prob(fit, z).mean() > mixture.log_prob(one, z).mean() + 0.3
    with pytest.raises(ValueError, match="between 1 and"):
        mixture.fit(z[:3], 4)


def test_a_vae_saves_the_mixture_fitted_to_its_training_posteriors_and_samples_from_it(tmp_path):
    cfg = tiny_vae_config(epochs=1, final_eval="skip")
    cfg.model.prior_components = 3
    train_run(cfg, tmp_path / "run", log=lambda m: None, progress_bar=False)
    run = runs.load_run(tmp_path / "run")
    vae = run.model
    # the saved buffers are the fit of the final weights' posterior means over the training images
    with torch.no_grad():
        mu = vae.encode(eval_tensor(vae, runs.run_data(cfg).subset(cfg.train.subset), "train").float())[0]
    expected = mixture.fit(mu, 3)
    for name, value in vae.latent_mixture().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.allclose(vae.prior_weights, torch.full((3,), 1 / 3))
    # samples decode draws of that mixture: the same generator gives the same z
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    with torch.no_grad():
        torch.testing.assert_close(vae.sample(4, g1), vae.means(vae.decode(mixture.sample(expected, 4, g2))))


def test_with_prior_keeps_the_weights_and_fits_or_drops_the_mixture():
    from genzoo.models.vae import VAE, VAEConfig

    torch.manual_seed(0)
    vae = VAE(VAEConfig(latent_dim=3, hidden=16, depth=1), (1, 8, 8)).eval()
    x = torch.bernoulli(torch.full((200, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(1))
    fitted = vae.with_prior(4, x)
    with torch.no_grad():
        expected = mixture.fit(vae.encode(x)[0], 4)
    for name, value in fitted.latent_mixture().items():
        torch.testing.assert_close(value, expected[name], msg=name)
    plain = fitted.with_prior(0, x)
    assert plain.cfg.prior_components == 0 and not any(k.startswith("prior_") for k in plain.state_dict())
    for k, v in vae.state_dict().items():
        assert torch.equal(fitted.state_dict()[k], v) and torch.equal(plain.state_dict()[k], v), k
