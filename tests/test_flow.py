"""Flow matching: the linear path, its loss, and the likelihood through the probability-flow ODE against the
closed form of Gaussian data under the optimal velocity field."""

import math

import pytest
import torch

from genzoo import theory
from genzoo.errors import ConfigError
from genzoo.models.flow import Flow, FlowConfig, LinearFlow

MU, S = 0.3, 0.5


def optimal_velocity(x, t, S=S):
    """E[eps - x_0 | x_t] for x_0 ~ N(MU, S^2) per dimension on x_t = (1 - t) x_0 + t eps: x_t is Gaussian with mean
    (1 - t) MU and std sqrt((1 - t)^2 S^2 + t^2), and the flow moves each point along its quantile."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    std = ((1 - t) ** 2 * S ** 2 + t ** 2).sqrt()
    d_std = (t - (1 - t) * S ** 2) / std
    return -MU + d_std * (x - (1 - t) * MU) / std


def prior(z):
    return theory.sum_except_batch(theory.standard_normal_log_prob(z))


def exact_log_prob(x, S=S):
    return theory.sum_except_batch(-0.5 * ((x - MU) / S) ** 2 - math.log(S) - 0.5 * math.log(2 * math.pi))


@pytest.mark.parametrize("steps", [0, 40])  # adaptive Dormand-Prince (the default), uniform RK4
def test_the_ode_likelihood_with_the_exact_divergence_is_the_closed_form(steps):
    x = MU + S * torch.randn((64, 1, 2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    estimate = theory.ode_log_likelihood(optimal_velocity, x, prior, steps=steps, probes=0, tol=1e-8)
    torch.testing.assert_close(estimate, exact_log_prob(x), rtol=0, atol=1e-6)


def test_the_adaptive_solver_follows_a_stiff_field_that_uniform_steps_miss():
    """Data concentrated in a width of 1e-3 (as 8-bit images are within a grey level) makes the field stiff near
    t = 0, where the divergence peaks at ~1/width: uniform RK4 steps misjudge the integral by many nats, the
    adaptive solver takes small steps there and meets the closed form, its error falling with the tolerance."""
    narrow = 1e-3
    x = MU + narrow * torch.randn((16, 1, 2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = exact_log_prob(x, narrow)

    def velocity(z, t):
        return optimal_velocity(z, t, narrow)

    uniform = theory.ode_log_likelihood(velocity, x, prior, steps=50, probes=0)
    assert (uniform - exact).abs().min() > 0.5
    errors, evaluations = [], []
    for tol in (1e-4, 1e-7):
        estimate = theory.ode_log_likelihood(velocity, x, prior, probes=0, tol=tol, evaluations=evaluations)
        errors.append((estimate - exact).abs().max().item())
    assert errors[1] < 1e-4 and errors[1] < errors[0] / 10, errors
    assert evaluations[0] < evaluations[1] < 2000, evaluations


def test_hutchinson_is_unbiased_and_its_variance_falls_with_the_probes():
    """A field with a non-diagonal Jacobian (Rademacher probes are exact on diagonal ones): Gaussian data with
    per-dimension scales, rotated by an orthogonal Q; the velocity is Q v_z(Q^T x), log p(x) = log p_z(Q^T x)."""
    d = 16
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    scales = torch.linspace(0.2, 1.5, d, dtype=torch.float64)

    def velocity(x, t):
        z = x.reshape(len(x), d) @ q  # Q^T x, row-wise
        tt = t.reshape(-1, 1).to(x.dtype)
        std = ((1 - tt) ** 2 * scales ** 2 + tt ** 2).sqrt()
        vz = -MU + (tt - (1 - tt) * scales ** 2) / std * (z - (1 - tt) * MU) / std
        return (vz @ q.T).reshape(x.shape)

    z = MU + scales * torch.randn((1, d), generator=g, dtype=torch.float64)
    x = (z @ q.T).reshape(1, 1, 4, 4).repeat(400, 1, 1, 1)  # 400 repetitions of one point
    exact = (-0.5 * ((z - MU) / scales) ** 2 - scales.log() - 0.5 * math.log(2 * math.pi)).sum().item()
    torch.testing.assert_close(theory.ode_log_likelihood(velocity, x[:1], prior, steps=40, probes=0).item(), exact,
                               rtol=0, atol=1e-5)
    one = theory.ode_log_likelihood(velocity, x, prior, steps=10, probes=1, generator=torch.Generator().manual_seed(2))
    four = theory.ode_log_likelihood(velocity, x, prior, steps=10, probes=4, generator=torch.Generator().manual_seed(3))
    se = one.std().item() / math.sqrt(len(one))
    assert one.std() > 0 and abs(one.mean().item() - exact) < 4 * se + 1e-3, (one.mean().item(), exact, se)
    ratio = (four.var() / one.var()).item()
    assert 0.15 < ratio < 0.4, ratio  # the variance of the estimate falls as 1/K with K probes


def test_the_path_and_its_target():
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    flow = LinearFlow()
    assert torch.equal(flow.q_sample(x0, torch.zeros(3), eps), x0)
    assert torch.equal(flow.q_sample(x0, torch.ones(3), eps), eps)
    t = torch.tensor([0.2, 0.5, 0.9])
    h = 1e-3
    numeric = (flow.q_sample(x0, t + h, eps) - flow.q_sample(x0, t - h, eps)) / (2 * h)
    torch.testing.assert_close(numeric, flow.target(x0, eps), rtol=1e-3, atol=1e-3)  # d x_t / dt


def test_the_loss_draws_its_noise_from_the_generator_given():
    model = Flow(FlowConfig(channels=8, class_cond=True), (1, 28, 28))
    x, y = torch.randint(0, 256, (4, 1, 28, 28)).float(), torch.tensor([0, 1, 2, 3])
    state = torch.get_rng_state()
    a = model.loss(x, y, generator=torch.Generator().manual_seed(7))
    b = model.loss(x, y, generator=torch.Generator().manual_seed(7))
    assert a.shape == (4,) and torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not touched


@pytest.mark.parametrize("dequantise", [False, True])
def test_the_training_data_is_the_data_the_bound_evaluates_when_dequantised(dequantise, monkeypatch):
    """--dequantise true trains on 2 (x + u) / 256 - 1, u ~ U[0, 1): every point inside its pixel's bin of the
    likelihood's dequantisation (dequantised_log_prob), spread over the bin; off, the grey levels x / 127.5 - 1."""
    model = Flow(FlowConfig(channels=8, dequantise=dequantise), (1, 28, 28))
    x = torch.randint(0, 256, (8, 1, 28, 28)).float()
    seen = []
    monkeypatch.setattr(LinearFlow, "training_loss", lambda self, fn, x0, **kw: seen.append(x0) or x0.mean((1, 2, 3)))
    model.loss(x, generator=torch.Generator().manual_seed(0))
    x0 = seen[0]
    if not dequantise:
        assert torch.equal(x0, x / 127.5 - 1.0)
        return
    position = (x0 + 1.0) / 2.0 * 256.0 - x  # where in its bin [x, x + 1) each training value fell
    assert position.min() >= 0.0 and position.max() < 1.0
    assert abs(position.mean().item() - 0.5) < 0.01 and abs(position.var().item() - 1 / 12) < 0.005  # uniform


def test_the_family_scores_8_bit_images_and_samples_with_its_own_options():
    torch.manual_seed(0)
    model = Flow(FlowConfig(channels=8), (1, 28, 28)).eval()
    x = torch.randint(0, 256, (2, 1, 28, 28)).float()
    lp = model.log_prob(x, steps=1, probes=1, generator=torch.Generator().manual_seed(0))
    assert lp.shape == (2,) and torch.isfinite(lp).all()
    with pytest.raises(ConfigError, match="8-bit images"):
        model.log_prob(x + 0.5)
    s = model.sample(2, torch.Generator().manual_seed(1), sampler="midpoint", steps=2)
    assert s.shape == (2, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
    with pytest.raises(ConfigError, match="the flow family's sampler takes no --eta option"):
        model.sample(1, eta=0.5)
    with pytest.raises(ConfigError, match="--sampler must be one of euler, heun, midpoint"):
        model.sample(1, sampler="ddim")
    with pytest.raises(ConfigError, match="not trained with --class-cond"):
        model.sample(1, y=torch.tensor([2]))


@pytest.mark.parametrize("law", ["uniform", "logit-normal"])
def test_training_times_follow_their_law(law):
    t = LinearFlow(law).sample_times(200_000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    grid = torch.tensor([0.05, 0.2, 0.5, 0.8, 0.95])
    empirical = (t[:, None] <= grid).double().mean(0)
    # P(t <= p): p itself, or Phi(logit p) for t = sigmoid(N(0, 1)), computed here from the normal CDF
    expected = grid.double() if law == "uniform" else 0.5 * (1 + torch.erf(torch.logit(grid.double()) / math.sqrt(2)))
    torch.testing.assert_close(empirical, expected, atol=4e-3, rtol=0)


def test_an_unknown_time_law_is_one_sentence():
    with pytest.raises(ConfigError, match="unknown time sampling 'beta'"):
        LinearFlow("beta")


class OptimalVelocity(torch.nn.Module):
    """The U-Net's stand-in: the optimal velocity field of Gaussian data, in the network's time units."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))  # the model finds its device from its parameters

    def forward(self, xt, t, y=None):
        from genzoo.models.flow import TIME_SCALE
        return optimal_velocity(xt, t / TIME_SCALE)


def test_inversion_finds_the_closed_form_noise_and_interpolation_ends_at_the_images():
    """Under the optimal field of N(MU, S^2) data, the ODE carries a point x_0 to the noise (x_0 - MU) / S; the
    inversion reaches it at Heun's order as steps grow, and the interpolation's end frames decode back to the two
    images (the DDIM paper's encoder-decoder, for the flow)."""
    model = Flow(FlowConfig(channels=8), (1, 28, 28)).eval()
    model.net = OptimalVelocity()
    g = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randint(0, 256, (2, 1, 28, 28), generator=g).float() for _ in range(2))
    exact = (x1 / 127.5 - 1.0 - MU) / S
    errors = {steps: (model.invert(x1, steps=steps) - exact).abs().max().item() for steps in (5, 10, 40)}
    assert errors[40] < 1e-3 and errors[5] / errors[10] > 3.0, errors  # second order: about 4x per halving
    path = model.interpolate(x1, x2, frames=5, steps=40)
    assert path.shape == (2, 5, 1, 28, 28)
    assert (path[:, 0] * 255 - x1).abs().max() < 1.0 and (path[:, -1] * 255 - x2).abs().max() < 1.0
    middle = path[:, 2] * 255
    assert (middle - x1).abs().mean() > 20 and (middle - x2).abs().mean() > 20  # a frame of its own
