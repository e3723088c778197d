"""Diffusion: the process against simulation and closed forms, the samplers against analytic denoisers, the
bound against a dataset whose log-likelihood is known."""

import math

import pytest
import torch
import torch.nn.functional as F

from genzoo import theory
from genzoo.checks import gaussian_data_denoiser
from genzoo.errors import ConfigError
from genzoo.models.ddpm import (DDPM, DDPMConfig, GaussianDiffusion, beta_schedule, stratum_edges,
                                timestep_subsequence)
from genzoo.nets.unet import UNet, Upsample, upsampling_kernel


@pytest.fixture(scope="module")
def linear():
    return GaussianDiffusion(beta_schedule("linear", 1000))


def test_schedules_are_the_published_ones():
    b = beta_schedule("linear", 1000)
    assert b.dtype == torch.float64 and len(b) == 1000
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    c = beta_schedule("cosine", 1000)
    s = 0.008
    f = lambda t: math.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = torch.cumprod(1 - c, 0)
    for t in (1, 10, 500, 900):
        assert alpha_bar[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    assert c.max() <= 0.999 and torch.all(c > 0)
    # frozen: a named schedule never changes once released
    assert b.sum().item() == pytest.approx(10.05, abs=1e-12)
    assert c.sum().item() == pytest.approx(12.441496417056296, abs=1e-12)
    assert torch.cumprod(1 - c, 0)[499].item() == pytest.approx(0.49384359044063775, abs=1e-14)
    assert torch.cumprod(1 - b, 0)[-1].item() == pytest.approx(4.0358297653756754e-05, rel=1e-12)
    with pytest.raises(ConfigError, match="unknown noise schedule"):
        beta_schedule("sigmoid", 10)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_induction_identity_holds_for_every_t(name):
    betas = beta_schedule(name, 1000)
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    # alpha_t (1 - alpha_bar_{t-1}) + beta_t = 1 - alpha_bar_t (the step of the induction behind 14.7)
    assert torch.allclose(alphas * (1 - alpha_bar_prev) + betas, 1 - alpha_bar, rtol=0, atol=1e-15)


def test_closed_form_matches_the_simulated_chain(linear):
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.9, -0.4, 0.0], dtype=torch.float64)
    x = x0.expand(40_000, 3).clone()
    checks = {0: None, 9: None, 99: None, 499: None, 999: None}
    betas = linear.betas.double()
    for t in range(1000):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, one step at a time
        x = torch.sqrt(1 - betas[t]) * x + torch.sqrt(betas[t]) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if t in checks:
            checks[t] = (x.mean(0), x.var(0))
    for t, (mean, var) in checks.items():
        ab = linear.alpha_bar64[t]
        se_mean = torch.sqrt((1 - ab) / 40_000)
        assert torch.all((mean - ab.sqrt() * x0).abs() < 5 * se_mean), t
        assert torch.allclose(var, (1 - ab).expand(3), rtol=0.05), t
        # and q_sample is that same distribution
        eps = torch.randn(40_000, 3, generator=g, dtype=torch.float64)
        xt = linear.q_sample(x0.float().expand(40_000, 3), torch.full((40_000,), t), eps.float())
        assert torch.all((xt.double().mean(0) - ab.sqrt() * x0).abs() < 5 * se_mean)


def test_posterior_matches_bayes_rule(linear):
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    t = torch.tensor([1, 5, 50, 300, 700, 999])
    mean, logvar = linear.q_posterior(x0, xt, t)
    a = 1 - beta_schedule("linear", 1000)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(a, 0)[:-1]])
    # product of q(x_t | x_{t-1}) and q(x_{t-1} | x_0), as Gaussians in x_{t-1}
    prec = a[t] / (1 - a[t]) + 1 / (1 - ab_prev[t])
    mu = (a[t].sqrt() * xt.double().T / (1 - a[t]) + ab_prev[t].sqrt() * x0.double().T / (1 - ab_prev[t])) / prec
    assert torch.allclose(mean.double(), mu.T, atol=1e-5)
    assert torch.allclose(logvar.double(), torch.log(1 / prec)[:, None].expand(6, 5), atol=1e-4)


def test_parameterisations_convert_into_each_other(linear):
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 1, 4, 4, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    xt = linear.q_sample(x0, t, eps)
    assert torch.allclose(linear.x0_from_eps(xt, t, eps), x0, atol=2e-3)
    assert torch.allclose(linear.eps_from_x0(xt, t, x0), eps, atol=2e-3)
    v = linear.v_from(x0, t, eps)
    assert torch.allclose(linear.x0_from_v(xt, t, v), x0, atol=1e-4)
    assert torch.allclose(linear.eps_from_v(xt, t, v), eps, atol=1e-4)
    for prediction, oracle in (("eps", eps), ("x0", x0), ("v", v)):
        d = GaussianDiffusion(beta_schedule("linear", 1000), prediction)
        x0_hat, eps_hat = d.predict(oracle, xt, t)
        assert torch.allclose(x0_hat, x0, atol=2e-3) and torch.allclose(eps_hat, eps, atol=2e-3)
        # L_simple with an oracle network is zero, per example
        loss = d.training_loss(lambda x, tt: d.target(x0, t, eps), x0, t, eps)
        assert loss.shape == (8,) and torch.all(loss == 0)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_is_min_snr_times_the_x0_error(prediction):
    # Hang et al. 2023: whatever the network predicts, the weighted loss is min(SNR_t, gamma) ||x0_hat - x0||^2,
    # computed here through predict() and the SNR alpha_bar / (1 - alpha_bar) in float64
    d = GaussianDiffusion(beta_schedule("linear", 1000), prediction, min_snr_gamma=5.0).double()
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 1, 4, 4, generator=g,
                                                                                      dtype=torch.float64)
    t = torch.tensor([0, 30, 100, 300, 700, 999])
    output = torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    weighted = d.training_loss(lambda x, tt: output, x0, t, eps)
    x0_hat, _ = d.predict(output, d.q_sample(x0, t, eps), t)
    snr = d.alpha_bar64[t] / (1 - d.alpha_bar64[t])
    expected = snr.clamp(max=5.0) * ((x0_hat - x0) ** 2).reshape(6, -1).mean(1)
    torch.testing.assert_close(weighted, expected, rtol=1e-5, atol=0)
    assert snr[0] > 5 > snr[-1]  # both sides of the clip are exercised
    plain = d.training_loss(lambda x, tt: output, x0, t, eps, weighted=False)
    torch.testing.assert_close(plain, ((output - d.target(x0, t, eps)) ** 2).reshape(6, -1).mean(1))


def test_min_snr_gamma_must_be_non_negative():
    with pytest.raises(ConfigError, match="min-snr-gamma must be non-negative"):
        GaussianDiffusion(beta_schedule("linear", 10), min_snr_gamma=-1.0)


def test_score_noise_identity_against_autograd(linear):
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 200, 600, 999])
    ab = linear.alpha_bar64[t][:, None]
    xt = (ab.sqrt() * x0 + (1 - ab).sqrt() * eps).requires_grad_(True)
    log_q = theory.gaussian_log_prob(xt, ab.sqrt() * x0, torch.log(1 - ab).expand_as(xt)).sum()
    (grad,) = torch.autograd.grad(log_q, xt)
    assert torch.allclose(theory.score_from_noise(eps, ab), grad, rtol=1e-10)  # 14.16
    assert torch.allclose(linear.score(eps.float(), t).double(), grad, rtol=1e-4)


def test_kl_terms_reduce_to_a_weighted_noise_mse(linear):
    """With equal variances each KL is ||mu_tilde - mu_theta||^2 / (2 sigma^2) (14.19), and for the eps
    parameterisation mu_tilde - mu_theta = beta_t / (sqrt(alpha_t) sqrt(1 - alpha_bar_t)) (eps_theta - eps)."""
    g = torch.Generator().manual_seed(4)
    x0, eps, eps_theta = (torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([1, 3, 30, 300, 600, 999])
    d = GaussianDiffusion(beta_schedule("linear", 1000)).double()
    xt = d.q_sample(x0, t, eps)
    mean_q, logvar_q = d.q_posterior(x0, xt, t)
    mean_p, logvar_p, _ = d.p_mean_logvar(lambda x, tt: eps_theta, xt, t)
    kl = theory.sum_except_batch(theory.gaussian_kl(mean_q, logvar_q, mean_p, logvar_p))
    var = d.beta_tilde[t].double()[:, None, None, None]
    assert torch.allclose(kl, theory.gaussian_kl_equal_variance(mean_q, mean_p, var), rtol=1e-6)  # float32 tables
    coef = (d.betas[t] / (d.alphas[t].sqrt() * d.sqrt_one_minus_alpha_bar[t])).double()
    weighted_mse = coef ** 2 / (2 * d.beta_tilde[t].double()) * ((eps - eps_theta) ** 2).sum((1, 2, 3))
    assert torch.allclose(kl, weighted_mse, rtol=1e-5)


def test_timestep_subsequences():
    for spacing in ("uniform", "quadratic"):
        for steps in (1, 2, 10, 50, 999, 1000):
            tau = timestep_subsequence(1000, steps, spacing)
            assert len(tau) == steps and tau[-1] == 999 and tau[0] >= 0
            assert all(a < b for a, b in zip(tau, tau[1:]))
    assert timestep_subsequence(1000, 1000) == list(range(1000))
    q = timestep_subsequence(1000, 10, "quadratic")
    assert q[1] - q[0] < q[-1] - q[-2]  # denser near the data
    for bad in (0, 1001):
        with pytest.raises(ConfigError, match="--steps must be between 1 and the 1000"):
            timestep_subsequence(1000, bad)


def test_ddim_on_all_steps_with_eta_one_is_ancestral_sampling():
    """14.26: DDIM over tau = 0..T-1 with eta = 1 has DDPM's variance beta_tilde, so with the same noise it
    takes the very same path."""
    d = GaussianDiffusion(beta_schedule("linear", 200)).double()
    fn = gaussian_data_denoiser(d, 0.3, 0.5)
    noise = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ddpm = d.ddpm_sample(fn, noise, torch.Generator().manual_seed(1), clip=False)
    ddim = d.ddim_sample(fn, noise, list(range(200)), eta=1.0, generator=torch.Generator().manual_seed(1), clip=False)
    assert torch.allclose(ddpm, ddim, atol=1e-5)  # float32 tables in one, float64 alpha_bar in the other
    ddim0 = d.ddim_sample(fn, noise, list(range(200)), eta=0.0, generator=torch.Generator().manual_seed(1), clip=False)
    assert (ddim0 - ddpm).abs().max() > 0.1  # while the deterministic path is another one


def test_ddim_with_eta_zero_is_deterministic(linear):
    fn = gaussian_data_denoiser(linear, 0.0, 0.5)
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    tau = timestep_subsequence(1000, 20)
    a = linear.ddim_sample(fn, noise, tau, 0.0, torch.Generator().manual_seed(1))
    b = linear.ddim_sample(fn, noise, tau, 0.0, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = linear.ddim_sample(fn, noise, tau, 0.5, torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)
    with pytest.raises(ConfigError, match="--eta must be non-negative"):
        linear.ddim_sample(fn, noise, tau, -0.1)


def test_samplers_reproduce_gaussian_data():
    """With the exact denoiser for data N(m, s^2), ancestral sampling over all T steps returns N(m, s^2), DDIM
    at 50 steps nearly so, and with few steps the deterministic sampler (eta = 0) stays closer to the data
    than the stochastic one (eta = 1): the DDIM paper's Table 1 in miniature."""
    m, s = 0.4, 0.3
    d = GaussianDiffusion(beta_schedule("cosine", 1000)).double()
    fn = gaussian_data_denoiser(d, m, s)
    noise = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def ddim(steps, eta):
        return d.ddim_sample(fn, noise, timestep_subsequence(1000, steps), eta, torch.Generator().manual_seed(1), clip=False)

    x = d.ddpm_sample(fn, noise, torch.Generator().manual_seed(1), clip=False)
    assert abs(x.mean().item() - m) < 0.01 and abs(x.std().item() - s) < 0.01
    x = ddim(50, 0.0)
    assert abs(x.mean().item() - m) < 0.01 and abs(x.std().item() - s) < 0.02
    err = {eta: abs(ddim(10, eta).std().item() - s) for eta in (0.0, 1.0)}
    assert err[0.0] < err[1.0]
    assert abs(ddim(100, 1.0).std().item() - s) < err[1.0]  # and eta = 1 improves with more steps


def test_ddim_inversion_round_trip():
    d = GaussianDiffusion(beta_schedule("linear", 1000)).double()
    fn = gaussian_data_denoiser(d, 0.0, 0.5)
    x0 = 0.5 * torch.randn(8, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = []
    for steps in (50, 200, 1000):
        tau = timestep_subsequence(1000, steps)
        latent = d.ddim_invert(fn, x0, tau)
        assert latent.std() > 0.7  # it really went to noise
        errors.append((d.ddim_sample(fn, latent, tau, 0.0, clip=False) - x0).abs().max().item())
    # first order: the error shrinks in proportion to the step size, and the round trip becomes exact
    assert errors[0] > 3 * errors[1] > 9 * errors[2] and errors[2] < 0.01


def test_bound_lies_above_the_true_nll_on_a_toy_dataset():
    """Data uniform over K known 8-bit images: the true NLL is log K. With the exact optimal denoiser (the
    posterior mean over the K images) the variational bound is a valid upper bound on it, and finite."""
    torch.manual_seed(0)
    K, D = 4, 3
    images = torch.randint(0, 256, (K, 1, 1, D)).double() / 127.5 - 1  # in the model space [-1, 1]
    d = GaussianDiffusion(beta_schedule("linear", 1000), prediction="x0").double()

    def optimal_x0(xt, t):
        ab = d.alpha_bar64[t].reshape(-1, 1, 1, 1)
        sq = ((xt.unsqueeze(1) - ab.sqrt().unsqueeze(1) * images.unsqueeze(0)) ** 2).sum((2, 3, 4))  # (N, K)
        w = torch.softmax(-sq / (2 * (1 - ab.reshape(-1, 1))), dim=1)
        return (w[:, :, None, None, None] * images.unsqueeze(0)).sum(1)

    x0 = images.repeat(50, 1, 1, 1)
    terms = d.bound_terms(optimal_x0, x0, torch.Generator().manual_seed(1))
    bound = terms["neg_elbo"]
    assert bound.shape == (K * 50,) and torch.all(torch.isfinite(bound))
    assert torch.allclose(terms["prior"] + terms["kl"] + terms["l0"], bound)
    se = bound.std() / math.sqrt(len(bound))
    assert bound.mean() >= math.log(K) - 3 * se  # the bound is above the true NLL
    assert bound.mean() < math.log(K) + 3.0 * D  # and not absurdly loose: within 3 nats per dimension
    assert torch.all(terms["prior"] < 1e-3)  # q(x_T | x_0) is nearly N(0, I) for the linear schedule


def test_the_stratified_bound_is_an_unbiased_estimate_of_the_full_one():
    """The bound's KL sum from K stratified steps per image (K + 1 evaluations instead of T) has the full sum's
    expectation. An x0-predictor off the one training image by a known offset c(t) makes every KL term a function
    of t alone (the posterior means differ by coef1(t) c(t)), so the full sum is exact and the estimate's only
    noise is the draw of the steps: its mean over 20,000 draws must agree to within 4 standard errors (which a
    stratum weight off by one step fails), for K = 1 (one uniform step, weight T - 1) and K = 64, and
    stratification must cut the noise."""
    image = torch.tensor([[[[-0.6, 0.2, 0.9]]]], dtype=torch.float64)
    d = GaussianDiffusion(beta_schedule("linear", 1000), prediction="x0").double()

    def off_by_c(xt, t):
        return image.expand(len(xt), -1, -1, -1) + 0.2 * torch.sin(t.double() / 50).reshape(-1, 1, 1, 1)

    full = d.bound_terms(off_by_c, image, torch.Generator().manual_seed(1))["kl"].item()
    assert full > 1.0  # far from zero: a wrong weight shows
    spread = {}
    for k in (1, 64):
        est = d.bound_terms(off_by_c, image.repeat(20000, 1, 1, 1), torch.Generator().manual_seed(2),
                            t_samples=k)["kl"]
        se = (est.std() / math.sqrt(len(est))).item()
        assert abs(est.mean().item() - full) < 4 * se, (k, est.mean().item(), full, se)
        spread[k] = est.std().item()
    assert spread[64] < 0.1 * spread[1]  # stratification: the noise of the step draws falls with K
    for T, k in ((1000, 1), (1000, 50), (1000, 998), (10, 8), (4000, 64)):  # k strata that cover t = 2..T once
        edges = stratum_edges(T, k)
        assert len(edges) == k + 1 and edges[0] == 1 and edges[-1] == T
        assert all(a < b for a, b in zip(edges, edges[1:]))
    x0 = image.repeat(3, 1, 1, 1)
    same = d.bound_terms(off_by_c, x0, torch.Generator().manual_seed(3), t_samples=999)["neg_elbo"]
    assert torch.equal(same, d.bound_terms(off_by_c, x0, torch.Generator().manual_seed(3))["neg_elbo"])


def test_unet_shapes_and_conditioning():
    for shape, mult, rc in (((1, 28, 28), (1, 2, 2), True), ((1, 28, 28), (1, 2, 2, 2), False),
                            ((3, 32, 32), (1, 2, 2, 2), True), ((1, 28, 28), (1, 2, 4), False)):
        net = UNet(in_channels=shape[0], channels=8, channel_mult=mult, num_classes=10, resample_conv=rc)
        with torch.no_grad():
            for p in net.parameters():  # undo the zero init so the output depends on its inputs
                p.add_(0.05 * torch.randn_like(p))
        x, t = torch.randn(3, *shape), torch.tensor([0, 500, 999])
        out = net(x, t)
        assert out.shape == (3, *shape)
        assert not torch.allclose(net(x, t, torch.tensor([1, 2, 3])), out)
        assert torch.allclose(net(x, t, torch.full((3,), 10)), out)  # no label = the "null" class
        assert not torch.allclose(net(x, torch.tensor([1, 1, 1])), out)


def test_the_upsampling_convolution_is_one_transposed_convolution_of_the_same_weights():
    """Upsample computes conv3x3(nearest x2 (x)) as a stride-2 transposed convolution of the folded kernel: the
    same function and the same gradients, at every size (borders included) and in both layouts."""
    torch.manual_seed(0)
    up = Upsample(6)
    for shape, channels_last in (((2, 6, 5, 7), False), ((1, 6, 1, 1), False), ((3, 6, 4, 4), True)):
        x = torch.randn(*shape, requires_grad=True)
        if channels_last:
            up.to(memory_format=torch.channels_last)
        reference = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        out = up(x)
        assert out.shape == reference.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
        assert torch.allclose(out, reference, atol=1e-5), (out - reference).abs().max()
        g_out = torch.autograd.grad(out.square().sum(), [x, up.conv.weight, up.conv.bias])
        g_ref = torch.autograd.grad(reference.square().sum(), [x, up.conv.weight, up.conv.bias])
        for a, b in zip(g_out, g_ref):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1] = 1.0  # the centre tap alone: the conv is the identity and the whole is plain upsampling
    assert torch.equal(upsampling_kernel(w)[0, 0], torch.tensor([[0., 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]))


def test_ddpm_family_end_to_end_pieces():
    torch.manual_seed(0)
    model = DDPM(DDPMConfig(timesteps=50, channels=8, class_cond=True), (1, 28, 28)).eval()
    x = torch.randint(0, 256, (4, 1, 28, 28)).float()
    y = torch.tensor([0, 1, 2, 3])
    assert model.loss(x, y).shape == (4,)
    a = model.sample(2, torch.Generator().manual_seed(5), sampler="ddim", steps=5)
    b = model.sample(2, torch.Generator().manual_seed(5), sampler="ddim", steps=5)
    assert torch.equal(a, b) and a.shape == (2, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
    assert model.sample(2, torch.Generator().manual_seed(5), sampler="ddpm").shape == (2, 1, 28, 28)
    guided = model.sample(2, torch.Generator().manual_seed(5), steps=5, y=torch.tensor([3, 3]), guidance=2.0)
    assert guided.shape == (2, 1, 28, 28)
    with torch.no_grad():  # guidance 1 is plain conditioning; guidance 0 is unconditional
        xt, t, lab = torch.randn(2, 1, 28, 28), torch.tensor([10, 20]), torch.tensor([3, 4])
        assert torch.allclose(model.model_fn(lab, 1.0)(xt, t), model.net(xt, t, lab))
        assert torch.allclose(model.model_fn(lab, 0.0)(xt, t), model.net(xt, t, None), atol=1e-6)
    assert model.elbo(x[:2]).shape == (2,)
    with pytest.raises(ConfigError, match="--steps must be between"):
        model.sample(1, steps=51)
    with pytest.raises(ConfigError, match="--sampler must be one of ddpm, ddim, euler, heun, dpm\\+\\+2m"):
        model.sample(1, sampler="rk4")
    unconditional = DDPM(DDPMConfig(timesteps=10, channels=8), (1, 28, 28))
    with pytest.raises(ConfigError, match="not trained with --class-cond"):
        unconditional.sample(1, steps=2, y=torch.tensor([1]))


def test_default_unet_is_the_cpu_lean_one():
    net = DDPM(DDPMConfig(), (1, 28, 28)).net
    assert sum(p.numel() for p in net.parameters()) == 1_112_993  # matched (within 5 %) to the diffusers baseline
    assert next(iter(net.stem.parameters())).is_contiguous(memory_format=torch.channels_last)


def test_ddpm_invert_then_sample_round_trip():
    """The family's DDIM encoder and decoder invert each other (given a smooth denoiser: here the analytic one
    for Gaussian data stands in for the U-Net), and the error shrinks with the number of steps."""
    model = DDPM(DDPMConfig(timesteps=1000, channels=8), (1, 28, 28)).eval()

    class Analytic(torch.nn.Module):
        def forward(self, xt, t, y=None):
            return gaussian_data_denoiser(model.diffusion, 0.0, 0.5)(xt, t)

    model.net = Analytic()
    x = torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float()
    errors = {}
    for steps in (20, 1000):
        latent = model.invert(x, steps=steps)
        assert latent.shape == x.shape and latent.std() > 0.5
        back = model.sample(2, sampler="ddim", steps=steps, noise=latent, clip=False) * 255
        errors[steps] = (back - x).abs().max().item()
    assert errors[1000] < 1.0 < errors[20]  # within one grey level at T steps


def test_ddpm_interpolation_ends_at_the_two_images_and_follows_the_sphere():
    """Song et al. 2021 section 5.3: the DDIM-inverted x_T of two images, joined on the sphere and decoded. With
    the analytic denoiser and all T steps, the end frames reconstruct the images; the middle noise keeps the norm
    of its ends (a straight line would shrink it by about 1/sqrt(2) between near-orthogonal Gaussian vectors)."""
    from genzoo.models.denoising import noise_path
    model = DDPM(DDPMConfig(timesteps=1000, channels=8), (1, 28, 28)).eval()

    class Analytic(torch.nn.Module):
        def forward(self, xt, t, y=None):
            return gaussian_data_denoiser(model.diffusion, 0.0, 0.5)(xt, t)

    model.net = Analytic()
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randint(0, 256, (1, 1, 28, 28), generator=g).float() for _ in range(2))
    path = model.interpolate(x1, x2, frames=3, steps=1000)
    assert path.shape == (1, 3, 1, 28, 28)
    assert (path[0, 0] * 255 - x1[0]).abs().max() < 1.0 and (path[0, -1] * 255 - x2[0]).abs().max() < 1.0
    z1, z2 = (torch.randn((1, 1, 28, 28), generator=g) for _ in range(2))
    frames = noise_path(z1, z2, 5)
    assert torch.equal(frames[0], z1[0]) and torch.allclose(frames[-1], z2[0], atol=1e-5)
    norms = frames.flatten(1).norm(dim=1)
    assert (norms - z1.norm()).abs().max() < 0.05 * z1.norm()  # ends of equal norm up to sampling noise
    assert ((z1 + z2) / 2).norm() < 0.8 * z1.norm()  # what the straight line would have given
