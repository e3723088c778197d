"""The VAE: its bound against an exact log-likelihood, the IWAE ordering, and its user-facing methods."""

import itertools
import math

import pytest
import torch

from genzoo import theory
from genzoo.errors import ConfigError
from genzoo.models.base import DensityKind
from genzoo.models.vae import VAE, VAEConfig


def tiny_vae(seed=0):
    """Latent size 1 on 2x2 binary images: log p(x) is a 1-D integral we can do by quadrature."""
    torch.manual_seed(seed)
    model = VAE(VAEConfig(latent_dim=1, hidden=16, depth=1), (1, 2, 2)).double().eval()
    with torch.no_grad():  # make the decoder depend on z strongly, so the bound has a visible gap
        for p in model.parameters():
            p.mul_(3.0)
    return model


def exact_log_px(model, x):
    z = torch.linspace(-12, 12, 24001, dtype=torch.float64)[:, None]
    log_px_z = theory.sum_except_batch(theory.bernoulli_log_prob(
        x.unsqueeze(0).expand(len(z), *x.shape).reshape(len(z) * len(x), *x.shape[1:]),
        model.decode(z.repeat_interleave(len(x), 0))))
    log_joint = log_px_z.reshape(len(z), len(x)) + theory.standard_normal_log_prob(z)
    return torch.logsumexp(log_joint, 0) + math.log(z[1, 0] - z[0, 0])


@pytest.fixture(scope="module")
def all_images():
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64).reshape(16, 1, 2, 2)


def test_quadrature_is_a_normalised_distribution(all_images):
    with torch.no_grad():
        log_px = exact_log_px(tiny_vae(), all_images)
    assert torch.logsumexp(log_px, 0).item() == pytest.approx(0.0, abs=1e-9)


def test_elbo_below_iwae_below_log_likelihood(all_images):
    model = tiny_vae()
    x = all_images.repeat(200, 1, 1, 1)  # 200 noisy evaluations of each of the 16 images
    with torch.no_grad():
        log_px = exact_log_px(model, all_images)
        elbo_draws = model.elbo(x).reshape(200, 16)
        iwae_draws = {k: model.log_likelihood_estimate(x, k).double().reshape(200, 16) for k in (1, 10, 100, 1000)}
    elbo, elbo_se = elbo_draws.mean(0), elbo_draws.std(0) / math.sqrt(200)
    iwae = {k: v.mean(0) for k, v in iwae_draws.items()}
    iwae_se = {k: v.std(0) / math.sqrt(200) for k, v in iwae_draws.items()}
    assert torch.all(elbo <= log_px + 4 * elbo_se)  # ELBO <= log p(x) (14.11), up to Monte Carlo error
    assert (log_px - elbo).mean() > 1.0  # with a real gap: q is not the true posterior
    assert torch.all((iwae[1] - elbo).abs() <= 4 * (elbo_se + iwae_se[1]))  # IWAE with k = 1 is the ELBO in expectation
    for small, large in ((1, 10), (10, 100), (100, 1000)):
        assert torch.all(iwae[small] <= iwae[large] + 4 * (iwae_se[small] + iwae_se[large]))
        assert iwae[small].mean() < iwae[large].mean()
    assert torch.all(iwae[1000] <= log_px + 4 * iwae_se[1000])  # a bound, in expectation
    assert torch.allclose(iwae[1000], log_px, atol=0.05)  # and nearly tight for large k
    assert (log_px - elbo).mean() > 10 * (log_px - iwae[1000]).abs().mean()


def test_training_on_the_iwae_bound_is_minus_the_iwae_estimate_and_tighter(all_images):
    # the training loss with train_k = k is minus the IWAE bound with k samples: the same draws give the same
    # number as log_likelihood_estimate, and in expectation it lies between the ELBO and log p(x)
    model = tiny_vae()
    model.cfg.train_k = 50
    torch.manual_seed(5)
    loss = model.loss(all_images)
    torch.manual_seed(5)
    estimate = model.log_likelihood_estimate(all_images, 50)
    torch.testing.assert_close(-loss.float(), estimate, rtol=1e-6, atol=1e-6)
    x = all_images.repeat(100, 1, 1, 1)
    with torch.no_grad():
        iwae = -model.loss(x).reshape(100, 16).mean(0)
        elbo = model.elbo(x).reshape(100, 16).mean(0)
        log_px = exact_log_px(model, all_images)
    assert (iwae - elbo).mean() > 0.5 and torch.all(iwae <= log_px + 0.05)
    loss.mean().backward()  # differentiable through the reparameterised draws
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_elbo_terms_use_the_closed_form_kl():
    torch.manual_seed(1)
    model = VAE(VAEConfig(latent_dim=3, hidden=8, depth=1), (1, 4, 4)).double()
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.3, dtype=torch.float64))
    terms = model.elbo_terms(x)
    assert all(v.shape == (5,) for v in terms.values())
    assert torch.allclose(terms["elbo"], terms["log_px_z"] - terms["kl"])
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(200_000, *mu.shape, dtype=torch.float64)
    mc_kl = (theory.gaussian_log_prob(z, mu, logvar) - theory.standard_normal_log_prob(z)).sum(-1).mean(0)
    assert torch.allclose(terms["kl"], mc_kl, atol=0.02)


@pytest.mark.parametrize("arch, shape, likelihood", [("mlp", (1, 28, 28), "bernoulli"), ("conv", (1, 28, 28), "bernoulli"),
                                                     ("conv", (3, 32, 32), "logistic"), ("mlp", (3, 32, 32), "logistic")])
def test_shapes_of_every_method(arch, shape, likelihood):
    model = VAE(VAEConfig(latent_dim=6, arch=arch, hidden=32, channels=8, likelihood=likelihood), shape).eval()
    x = torch.rand(5, *shape).bernoulli() if likelihood == "bernoulli" else torch.randint(0, 256, (5, *shape)).float()
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 6)
    params = shape[0] * (1 if likelihood == "bernoulli" else 2)
    assert model.decode(mu).shape == (5, params, *shape[1:])
    assert model.loss(x).shape == (5,)
    assert model.log_likelihood_estimate(x, 7, max_rows=12).shape == (5,)  # chunked over k
    for images in (model.sample(4), model.reconstruct(x)):
        assert images.shape[1:] == shape and images.min() >= 0 and images.max() <= 1
    path = model.interpolate(x[:2], x[2:4], frames=5, mode="slerp")
    assert path.shape == (2, 5, *shape)
    assert torch.allclose(path[:, 0], model.reconstruct(x[:2]), atol=1e-5)
    assert torch.allclose(path[:, -1], model.reconstruct(x[2:4]), atol=1e-5)
    with pytest.raises(ValueError, match="mode"):
        model.interpolate(x[:1], x[1:2], mode="cubic")


def test_sampling_is_reproducible_with_a_seed():
    model = VAE(VAEConfig(latent_dim=4, hidden=16), (1, 28, 28)).eval()
    a = model.sample(3, torch.Generator().manual_seed(7))
    b = model.sample(3, torch.Generator().manual_seed(7))
    c = model.sample(3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_bound_model_offers_only_what_its_kind_allows():
    model = VAE(VAEConfig(latent_dim=2, hidden=8), (1, 4, 4))
    assert model.kind is DensityKind.BOUND
    x = torch.zeros(2, 1, 4, 4)
    for method in (model.log_prob, model.energy):
        with pytest.raises(ConfigError, match="kind 'bound'"):
            method(x)


def test_the_logistic_vae_scores_8_bit_colour_in_bits_per_dim():
    from genzoo.data.views import reports_bits_per_dim

    torch.manual_seed(0)
    model = VAE(VAEConfig(latent_dim=4, hidden=16, depth=1, likelihood="logistic"), (3, 8, 8))
    assert model.view == "uint8" and reports_bits_per_dim(model.view)
    x = torch.randint(0, 256, (6, 3, 8, 8)).float()
    params = model.decode(torch.randn(6, 4))
    assert params.shape == (6, 6, 8, 8)  # a mean and a log-scale per subpixel
    mean, log_scale = params.chunk(2, dim=1)
    expected = theory.discretized_logistic_log_prob(x, mean, log_scale.clamp(min=-7.0)).sum((1, 2, 3))
    torch.testing.assert_close(model.log_px_z(x, params), expected)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x) for _ in range(200)]).mean(0)
        iwae = model.log_likelihood_estimate(x, 200)
    assert torch.all(elbo < 0) and torch.all(iwae > elbo)  # a bound on log P of discrete data, and IWAE tighter
    assert torch.all(-iwae / (3 * 64 * math.log(2)) < 10)  # an untrained model: about the 8 bits of uniform noise
    images = model.sample(3, torch.Generator().manual_seed(0))
    assert images.shape == (3, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ConfigError, match="a Bernoulli VAE models binarised grey images"):
        VAE(VAEConfig(), (3, 32, 32))
