"""RealNVP: invertibility, log-determinants against autograd Jacobians, and the accounting of the preprocessing."""

import math

import pytest
import torch

from genzoo.errors import ConfigError
from genzoo import storage
from genzoo.models.realnvp import (ActNorm, AffineCoupling, MultiScaleFlow, RealNVP, RealNVPConfig,
                                   VariationalDequantizer, checkerboard, inverse_logit_transform, logit_transform,
                                   squeeze, unsqueeze)


def randomise(module, std=0.2):
    """Non-zero weights everywhere: a fresh coupling is the identity, which would test nothing."""
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)
    return module


def jacobian_log_det(fn, x):
    """Brute force: log |det| of the full Jacobian of fn at each example of x, by autograd."""
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(1, *xi.shape)).reshape(-1), xi.reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def test_squeeze_is_a_permutation_with_its_inverse():
    x = torch.arange(2 * 3 * 4 * 6.0).reshape(2, 3, 4, 6)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze(s), x)
    assert torch.equal(s[0, :4, 0, 0], torch.tensor([x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]))


def test_checkerboard_masks_alternate():
    a, b = checkerboard(3, 4, 0), checkerboard(3, 4, 1)
    assert torch.equal(a + b, torch.ones(1, 1, 3, 4)) and a[0, 0, 0, 0] == 1 and a[0, 0, 0, 1] == 0


@pytest.mark.parametrize("mask,parity", [("checkerboard", 0), ("checkerboard", 1), ("channel", 0), ("channel", 1)])
def test_coupling_log_det_is_the_sum_of_s_and_matches_autograd(mask, parity):
    torch.manual_seed(parity)
    layer = randomise(AffineCoupling(4, mask, parity, hidden=8, blocks=1).double())
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    y, log_det = layer(x)
    torch.testing.assert_close(log_det, jacobian_log_det(lambda v: layer(v)[0], x), rtol=1e-10, atol=1e-10)
    assert log_det.abs().min() > 1e-3  # a non-trivial transformation
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-12)
    # the kept part passes through unchanged (the Jacobian is triangular)
    if mask == "checkerboard":
        keep = checkerboard(2, 2, parity).bool().expand_as(x)
    else:
        keep = torch.zeros_like(x, dtype=torch.bool)
        keep[:, 2 * parity:2 * parity + 2] = True
    assert torch.equal(y[keep], x[keep]) and not torch.allclose(y[~keep], x[~keep])


def test_multiscale_flow_inverts_and_its_log_det_matches_autograd():
    torch.manual_seed(0)
    flow = randomise(MultiScaleFlow((1, 4, 4), scales=3, hidden=8, blocks=1).double(), std=0.1)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    z, log_det = flow(x)
    assert z.shape == (2, 16)
    assert (flow.inverse(z) - x).abs().max() < 1e-10
    torch.testing.assert_close(log_det, jacobian_log_det(lambda v: flow(v)[0], x), rtol=1e-9, atol=1e-9)


def test_actnorm_initialises_from_its_first_training_batch_only():
    norm = ActNorm(3).double()
    x = 2.0 + 5.0 * torch.randn(64, 3, 4, 4, dtype=torch.float64)
    y, log_det = norm(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64),
                               rtol=1e-5, atol=0)
    assert bool(norm.initialized)
    before = [p.clone() for p in norm.parameters()]
    norm(3 * x)  # a second batch trains, never re-initialises
    assert all(torch.equal(a, b) for a, b in zip(before, norm.parameters()))
    fresh = ActNorm(3).eval()
    assert torch.equal(fresh(x.float())[0], x.float()) and not bool(fresh.initialized)  # eval: no initialisation


def test_multiscale_flow_with_actnorm_inverts_and_its_log_det_matches_autograd():
    torch.manual_seed(0)
    flow = MultiScaleFlow((1, 4, 4), scales=3, hidden=8, blocks=1, actnorm=True).double()
    x = torch.randn(8, 1, 4, 4, dtype=torch.float64)
    flow(x)  # the data-dependent initialisation
    randomise(flow, std=0.1)  # then other, non-trivial parameters everywhere (actnorm's included)
    z, log_det = flow(x[:2])
    assert (flow.inverse(z) - x[:2]).abs().max() < 1e-10
    torch.testing.assert_close(log_det, jacobian_log_det(lambda v: flow(v)[0], x[:2]), rtol=1e-9, atol=1e-9)
    norms = [m for m in flow.modules() if isinstance(m, ActNorm)]
    assert len(norms) == 3 + 3 + 3 + 3 + 4  # one before each coupling


def test_actnorm_survives_save_and_load(tmp_path):
    # the known pitfall: an "initialised" flag that is not a saved buffer re-initialises a loaded model on its
    # next training batch, and the loaded model is no longer the trained one
    torch.manual_seed(0)
    cfg = RealNVPConfig(scales=2, hidden=8, blocks=1, actnorm=True)
    model = RealNVP(cfg, (1, 4, 4))
    x = torch.randint(0, 256, (16, 1, 4, 4)).float()
    model.loss(x).mean().backward()  # initialises every actnorm
    storage.save_tensors(tmp_path / "w.safetensors", model.state_dict())
    loaded = RealNVP(cfg, (1, 4, 4))
    tensors, _ = storage.load_tensors(tmp_path / "w.safetensors")
    storage.load_weights(loaded, tensors, "w")
    assert sum(k.endswith("initialized") for k in tensors) == 3 + 3 + 4
    loaded.train()
    loaded.loss(2 * x.clamp(max=127)).mean()  # a training batch of other data: must not re-initialise
    g = torch.Generator().manual_seed(1)
    a = model.log_prob(x, generator=g)
    b = loaded.log_prob(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_logit_transform_log_det_matches_autograd_and_inverts():
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    y, log_det = logit_transform(x, 0.05)
    torch.testing.assert_close(log_det, jacobian_log_det(lambda v: logit_transform(v, 0.05)[0], x))
    torch.testing.assert_close(inverse_logit_transform(y, 0.05), x)


def test_identity_flow_on_uniform_noise_scores_exactly_8_bits_per_dim():
    # A fresh RealNVP is the identity (zero-initialised coupling outputs). With a logistic prior and alpha = 0,
    # the logit then maps the uniform density on [0, 1)^D to itself: log p(x') = 0, so every 8-bit image costs
    # exactly log 256 per dimension once the preprocessing Jacobian is counted.
    model = RealNVP(RealNVPConfig(scales=2, hidden=4, blocks=1, alpha=0.0, prior="logistic"), (1, 8, 8)).double()
    x = torch.randint(0, 256, (5, 1, 8, 8)).double()
    bits = -model.log_prob(x) / (64 * math.log(2))
    torch.testing.assert_close(bits, torch.full((5,), 8.0, dtype=torch.float64), rtol=0, atol=1e-9)
    # and with a Gaussian prior and alpha > 0, the same identity model scores the independent closed form
    model = RealNVP(RealNVPConfig(scales=2, hidden=4, blocks=1, alpha=0.05), (1, 8, 8)).double()
    g = torch.Generator().manual_seed(3)
    u = torch.rand(x.shape, generator=g, dtype=torch.float64)
    p = 0.05 + 0.9 * (x + u) / 256
    y = torch.log(p / (1 - p))
    expected = (-0.5 * y ** 2 - 0.5 * math.log(2 * math.pi) + math.log(0.9) - torch.log(p * (1 - p))
                - math.log(256)).sum((1, 2, 3))
    torch.testing.assert_close(model.log_prob(x, torch.Generator().manual_seed(3)), expected)


def test_sampling_inverts_the_flow_at_temperature_and_refuses_bad_input():
    torch.manual_seed(1)
    model = randomise(RealNVP(RealNVPConfig(scales=2, hidden=8, blocks=1), (1, 4, 4)).double(), std=0.1)
    s = model.sample(6, torch.Generator().manual_seed(0))
    assert s.shape == (6, 1, 4, 4) and s.min() >= 0 and s.max() <= 1
    cold = model.sample(6, torch.Generator().manual_seed(0), temperature=1e-9)
    assert torch.allclose(cold, cold[:1].expand_as(cold), atol=1e-6)  # every z -> 0
    with pytest.raises(ConfigError, match="temperature"):
        model.sample(1, temperature=-1.0)
    with pytest.raises(ConfigError, match="8-bit images"):
        model.log_prob(torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64))
    with pytest.raises(ConfigError, match="models 1x4x4 images"):
        model.log_prob(torch.zeros((1, 1, 8, 8), dtype=torch.float64))
    with pytest.raises(ConfigError, match="divisible by 4"):
        RealNVP(RealNVPConfig(scales=3), (1, 6, 6))


def test_the_density_integrates_to_one():
    # With alpha = 0 and a logistic prior the model is a density on (0, 1)^D; its integral, estimated by the mean
    # of p(x) over uniform draws, must be 1 within its Monte Carlo error.
    torch.manual_seed(2)
    model = randomise(RealNVP(RealNVPConfig(scales=1, hidden=8, blocks=1, alpha=0.0, prior="logistic"),
                              (1, 2, 2)).double(), std=0.1)
    x = torch.rand(50000, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = model.log_density(x).exp()
    se = p.std().item() / math.sqrt(len(p))
    assert p.std() > 0.1  # far from uniform, so the check has teeth
    assert abs(p.mean().item() - 1.0) < 5 * se, (p.mean().item(), se)


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
def test_a_conditional_coupling_is_triangular_in_x_whatever_its_context(mask):
    torch.manual_seed(4)
    layer = randomise(AffineCoupling(4, mask, 1, hidden=8, blocks=1, context=3).double())
    x, context = torch.randn(2, 4, 2, 2, dtype=torch.float64), torch.randn(2, 3, 2, 2, dtype=torch.float64)
    y, log_det = layer(x, context)
    for i in range(2):  # the Jacobian in x, the context held at the example's own
        torch.testing.assert_close(log_det[i:i + 1], jacobian_log_det(lambda v: layer(v, context[i:i + 1])[0],
                                                                      x[i:i + 1]), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.inverse(y, context), x, rtol=0, atol=1e-12)
    assert not torch.allclose(layer(x, -context)[0], y)  # the context matters


def dequantiser_output(deq, x, eps):
    """u = sigmoid(g(eps; x)), written out from the parts: the map whose Jacobian log q must account for."""
    context = deq.features(x / 127.5 - 1.0)
    y = eps
    for coupling in deq.couplings:
        y = coupling(y, context)[0]
    return torch.sigmoid(y)


def test_the_variational_dequantiser_returns_u_in_the_unit_box_with_its_log_density():
    torch.manual_seed(5)
    deq = randomise(VariationalDequantizer((1, 2, 2), hidden=6, couplings=3).double(), std=0.3)
    x = torch.randint(0, 256, (3, 1, 2, 2)).double()
    u, log_q = deq(x, torch.Generator().manual_seed(7))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(u, dequantiser_output(deq, x, eps), rtol=0, atol=1e-14)
    assert u.min() > 0 and u.max() < 1 and u.std() > 0.05
    expected = torch.stack([
        -0.5 * (eps[i] ** 2).sum() - 2 * math.log(2 * math.pi)
        - jacobian_log_det(lambda e: dequantiser_output(deq, x[i:i + 1], e), eps[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(log_q, expected, rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def tiny():
    """A randomised 2x2 RealNVP with uniform dequantisation, the same flow with a randomised variational
    dequantiser, one 8-bit image repeated 100,000 times, and that image's log P(x) = log of the integral of
    p((x + u) / 256) / 256^D over u in the unit box, by importance sampling with the uniform proposal (light-tailed
    weights: p is bounded on the box) with its standard error (delta method)."""
    torch.manual_seed(6)
    cfg = dict(scales=1, hidden=8, blocks=1, alpha=0.05)
    uniform = randomise(RealNVP(RealNVPConfig(**cfg), (1, 2, 2)).double(), std=0.3)
    variational = RealNVP(RealNVPConfig(**cfg, dequantisation="variational", deq_hidden=6, deq_couplings=2),
                          (1, 2, 2)).double()
    variational.flow.load_state_dict(uniform.flow.state_dict())
    randomise(variational.dequantizer, std=0.1)
    x = torch.tensor([[[[0.0, 17.0], [200.0, 255.0]]]], dtype=torch.float64).expand(100000, 1, 2, 2)
    with torch.no_grad():
        w = uniform.log_prob(x, torch.Generator().manual_seed(8))
    log_p = torch.logsumexp(w, 0) - math.log(len(w))
    se = ((w - log_p).exp().std() / math.sqrt(len(w))).item()
    assert se < 0.01 and w.std() > 0.5  # a precise reference, and a model far from flat across the bin
    return uniform, variational, x, log_p.item(), se


def test_the_variational_bound_is_log_p_minus_log_q_and_lies_below_the_likelihood(tiny):
    _, variational, x, log_p, se = tiny
    x = x[:20000]
    with torch.no_grad():
        bound = variational.log_prob(x, torch.Generator().manual_seed(9))
        u, log_q = variational.dequantizer(x, torch.Generator().manual_seed(9))
        torch.testing.assert_close(bound, variational.log_density((x + u) / 256) - log_q - 4 * math.log(256))
    gap = log_p - bound.mean().item()  # Jensen
    assert gap > 10 * bound.std().item() / math.sqrt(len(bound)) + 3 * se, (log_p, bound.mean().item())


@pytest.mark.parametrize("which", ["uniform", "variational"])
def test_importance_weighted_draws_tighten_the_bound_towards_the_likelihood(tiny, which):
    uniform, variational, x, log_p, se = tiny
    model, x = (uniform if which == "uniform" else variational), x[:5000]
    with torch.no_grad():
        draws = [model.log_prob(x, torch.Generator().manual_seed(s), draws=k) for s, k in ((1, 1), (2, 8))]
        g = torch.Generator().manual_seed(3)
        three = torch.stack([model.log_prob(x[:50], g) for _ in range(3)])
        torch.testing.assert_close(model.log_prob(x[:50], torch.Generator().manual_seed(3), draws=3),
                                   torch.logsumexp(three, 0) - math.log(3))
    (one, se_one), (eight, se_eight) = [(d.mean().item(), d.std().item() / math.sqrt(len(d))) for d in draws]
    assert one + 5 * (se_one + se_eight) < eight < log_p + 3 * (se + se_eight), (one, eight, log_p)


def test_a_variational_realnvp_survives_save_and_load_and_old_runs_load_unchanged(tmp_path):
    torch.manual_seed(7)
    cfg = RealNVPConfig(scales=2, hidden=8, blocks=1, dequantisation="variational", deq_hidden=4, deq_couplings=2)
    model = randomise(RealNVP(cfg, (1, 4, 4)), std=0.1)
    storage.save_tensors(tmp_path / "w.safetensors", model.state_dict())
    loaded = RealNVP(cfg, (1, 4, 4))
    storage.load_weights(loaded, storage.load_tensors(tmp_path / "w.safetensors")[0], "w")
    x = torch.randint(0, 256, (4, 1, 4, 4)).float()
    assert torch.equal(model.log_prob(x, torch.Generator().manual_seed(1)),
                       loaded.log_prob(x, torch.Generator().manual_seed(1)))
    # a uniform model has no dequantiser's weights, so the weights of runs trained before it load as they were
    plain = RealNVP(RealNVPConfig(scales=2, hidden=8, blocks=1), (1, 4, 4))
    assert not any(k.startswith("dequantizer") for k in plain.state_dict())
    assert "variational dequantisation" in model.nll_estimator and "uniform" in plain.nll_estimator
