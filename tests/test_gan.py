"""The GAN's losses against the theory, its two-player step, and its diagnostics."""

import math

import pytest
import torch

from genzoo import theory
from genzoo.checks import grid_mixtures
from genzoo.errors import ConfigError
from genzoo.models.gan import GAN, GANConfig, discriminator_losses, generator_losses, gradient_penalty


def test_minimax_discriminator_loss_at_d_star_is_minus_the_value():
    x, dx, p_data, p_g = grid_mixtures()
    logit = torch.log(p_data.clamp_min(1e-300)) - torch.log(p_g.clamp_min(1e-300))  # D* = sigmoid(logit)
    keep = (p_data > 1e-200) & (p_g > 1e-200)
    # E_data[loss_real] + E_g[loss_fake] by quadrature: the loss on a real x is softplus(-l), on a fake softplus(l)
    real_term = (p_data * torch.nn.functional.softplus(-logit))[keep].sum() * dx
    fake_term = (p_g * torch.nn.functional.softplus(logit))[keep].sum() * dx
    assert (real_term + fake_term).item() == pytest.approx(-theory.optimal_gan_value(p_data, p_g, dx).item(),
                                                           abs=1e-6)
    # the per-example function agrees with those two terms
    l = torch.tensor([0.3, -2.0], dtype=torch.float64)
    torch.testing.assert_close(discriminator_losses("minimax", l, l.flip(0)),
                               -torch.log(torch.sigmoid(l)) - torch.log(1 - torch.sigmoid(l.flip(0))))


def test_the_non_saturating_loss_keeps_the_gradient_the_minimax_loss_loses():
    # Early in training D(G(z)) ~ 0: the minimax generator loss log(1 - D) is flat there, -log D is not.
    l = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    (g_minimax,) = torch.autograd.grad(generator_losses("minimax", l).sum(), l)
    (g_ns,) = torch.autograd.grad(generator_losses("non-saturating", l).sum(), l)
    assert abs(g_minimax.item()) < 1e-4 and abs(g_ns.item()) > 0.99
    # both push D(G(z)) up: the same sign
    assert g_minimax.item() < 0 and g_ns.item() < 0


def test_hinge_and_wasserstein_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    torch.testing.assert_close(discriminator_losses("hinge", real, fake), torch.tensor([0.0, 1.5]))
    torch.testing.assert_close(discriminator_losses("wgan-gp", real, fake), torch.tensor([-5.0, -0.5]))
    torch.testing.assert_close(generator_losses("hinge", fake), torch.tensor([3.0, 0.0]))


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    w = torch.tensor([0.6, 0.8, 1.2])  # |w| = sqrt(2.44)
    critic = lambda x: x @ w  # noqa: E731
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    gp = gradient_penalty(critic, real, fake)
    torch.testing.assert_close(gp, torch.full((5,), (math.sqrt(2.44) - 1) ** 2))


@pytest.mark.parametrize("n_critic", [1, 3])
def test_a_step_moves_each_player_with_its_own_optimizer(n_critic):
    torch.manual_seed(0)
    model = GAN(GANConfig(hidden=16, depth=1, latent_dim=4, n_critic=n_critic), (2,))
    opts = {p: torch.optim.SGD(model.player_parameters(p), lr=0.1) for p in model.players}
    calls = []

    def update(player, losses):
        assert losses.shape == (8,)
        before = {p: [t.clone() for t in model.player_parameters(p)] for p in model.players}
        opts[player].zero_grad()
        losses.mean().backward()
        opts[player].step()
        for p in model.players:  # only this player's weights move
            moved = any(not torch.equal(a, b) for a, b in zip(before[p], model.player_parameters(p)))
            assert moved == (p == player), (player, p)
        calls.append(player)
        return losses.mean().item()

    for step in range(6):
        model.train_step(torch.randn(8, 2), None, step, update)
    assert calls.count("discriminator") == 6 and calls.count("generator") == 6 // n_critic
    assert set(model.player_parameters("generator")).isdisjoint(model.player_parameters("discriminator"))


def test_images_and_points_and_what_an_implicit_model_refuses():
    img = GAN(GANConfig(channels=4, latent_dim=8), (1, 28, 28))
    s = img.sample(3, torch.Generator().manual_seed(0))
    assert s.shape == (3, 1, 28, 28) and 0 <= s.min() and s.max() <= 1 and img.view == "float"
    assert GAN(GANConfig(channels=4, latent_dim=8), (3, 32, 32)).sample(2).shape == (2, 3, 32, 32)
    pts = GAN(GANConfig(hidden=8, depth=1), (2,))
    assert pts.sample(5).shape == (5, 2) and pts.view == "points"
    for method in (img.log_prob, img.elbo, img.energy):
        with pytest.raises(ConfigError, match="density kind 'implicit'"):
            method(s)
    with pytest.raises(ConfigError, match="temperature"):
        img.sample(1, temperature=0.0)


def test_diagnostics_warn_of_a_winning_discriminator_and_of_collapse():
    model = GAN(GANConfig(hidden=8, depth=1), (2,))
    healthy = {"val_d_real": 0.6, "val_d_fake": 0.4, "val_real_spread": 2.0, "val_fake_spread": 1.8}
    assert model.diagnose(healthy) == []
    won = model.diagnose({**healthy, "val_d_real": 0.99, "val_d_fake": 0.01})
    assert len(won) == 1 and "discriminator wins outright" in won[0]
    collapsed = model.diagnose({**healthy, "val_fake_spread": 0.1})
    assert len(collapsed) == 1 and "mode collapse" in collapsed[0]
    assert "diverging" in model.diagnose({"val_critic_real": 3e4, "val_critic_fake": -2e4})[0]


@pytest.mark.parametrize("loss,betas", [("non-saturating", (0.5, 0.999)), ("hinge", (0.5, 0.999)),
                                        ("wgan-gp", (0.0, 0.9))])
def test_each_loss_trains_with_the_adam_momentum_of_its_paper(loss, betas, tmp_path):
    from genzoo.config import EvalConfig, TrainConfig
    from genzoo.data import load_dataset
    from genzoo.runs import RunConfig
    from genzoo.trainer import Trainer

    cfg = RunConfig(family="gan", model=GANConfig(hidden=16, depth=1, latent_dim=4, loss=loss),
                    train=TrainConfig(dataset="toy-ring", subset=64, batch_size=32), eval=EvalConfig())
    data = load_dataset("toy-ring").subset(64)
    trainer = Trainer(GAN(cfg.model, data.image_shape), tmp_path, cfg, data, log=lambda s: None)
    assert {p: o.param_groups[0]["betas"] for p, o in trainer.optimizers.items()} == {
        "generator": betas, "discriminator": betas}
