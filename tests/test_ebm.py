"""The energy-based model: Langevin dynamics against a known stationary law, the replay buffer, the kind."""

import math

import pytest
import torch

from genzoo.errors import ConfigError
from genzoo.models.ebm import EBM, EBMConfig


class Quadratic(torch.nn.Module):
    """E(x) = |x - m|^2 / (2 s^2): exp(-E) is N(m, s^2 I)."""

    def __init__(self, m, s):
        super().__init__()
        self.m, self.s = m, s

    def forward(self, x):
        return ((x - self.m) ** 2).sum(1, keepdim=True) / (2 * self.s ** 2)


def test_langevin_dynamics_samples_exp_minus_energy():
    # With noise^2 = 2 * step_size, SGLD is the Euler discretisation of the Langevin diffusion whose stationary
    # law is exp(-E)/Z; for a Gaussian the discretised chain's variance is known exactly: s^2 / (1 - eps / (2 s^2)).
    eps, s = 1e-3, 0.3
    model = EBM(EBMConfig(hidden=4, depth=1, step_size=eps, noise=math.sqrt(2 * eps), buffer_size=1), (2,))
    model.net = Quadratic(torch.tensor([1.0, -0.5]), s)
    x = model.sample(10000, torch.Generator().manual_seed(0), steps=1500)
    exact_var = s ** 2 / (1 - eps / (2 * s ** 2))
    assert x.mean(0).tolist() == pytest.approx([1.0, -0.5], abs=0.01)
    assert x.var(0).tolist() == pytest.approx([exact_var] * 2, rel=0.05)  # 3.5 standard errors


def test_replay_buffer_continues_chains_and_stores_them_back():
    torch.manual_seed(0)
    model = EBM(EBMConfig(hidden=8, depth=1, buffer_size=50, reinit=0.0, sgld_steps=2, step_size=0.01), (2,))
    before = model.replay.clone()
    torch.manual_seed(1)
    x_neg = model.negatives(10)
    torch.manual_seed(1)
    idx = torch.randint(0, 50, (10,))  # the draw negatives() made
    once = torch.tensor([(idx == i).sum() == 1 for i in idx])  # a slot drawn twice keeps the last chain
    assert once.sum() >= 5 and torch.equal(model.replay[idx[once]], x_neg[once])
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(model.replay[untouched], before[untouched])
    assert not torch.equal(x_neg, before[idx])  # the chains moved...
    assert (x_neg - before[idx]).norm(dim=1).max() < 0.5  # ...on from where they were (2 small SGLD steps)


def test_contrastive_divergence_lowers_the_energy_of_data_relative_to_samples():
    torch.manual_seed(0)
    model = EBM(EBMConfig(hidden=32, depth=2, buffer_size=256, sgld_steps=5, step_size=0.01, noise=0.01,
                          energy_reg=0.0), (2,))
    data = torch.randn(256, 2) * 0.1 + torch.tensor([2.0, 0.0])
    gap = lambda: (model.energy(data).mean() - model.model_energy(model.replay).mean()).item()  # noqa: E731
    start = gap()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(30):
        loss = model.loss(data).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap() < start - 0.5


def test_an_unnormalised_model_offers_energy_only():
    model = EBM(EBMConfig(channels=4, hidden=8, buffer_size=4, sgld_steps=1), (1, 28, 28))
    x = torch.rand(3, 1, 28, 28)
    assert model.energy(x).shape == (3,) and model.view == "float"
    with pytest.raises(ConfigError, match="density kind 'unnormalised'.*does not offer log_prob"):
        model.log_prob(x)
    s = model.sample(2, torch.Generator().manual_seed(0), steps=3)
    assert s.shape == (2, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
    assert "replay" in model.state_dict()  # the buffer is saved with the weights (exact resume, sampling)
    sn = EBM(EBMConfig(channels=4, hidden=8, buffer_size=4, spectral_norm=True), (1, 28, 28))
    assert any("parametrizations" in k for k in sn.state_dict())
    with pytest.raises(ConfigError, match="--steps must be positive; got 0"):
        model.sample(1, steps=0)
    assert "diverging" in model.diagnose({"val_energy_data": 5e3})[0] and model.diagnose({"val_energy_data": 1}) == []


def test_short_run_chains_start_from_noise_whatever_the_buffer_holds():
    """The short-run preset (reinit 1): a training step's negatives are K SGLD steps from fresh noise, so they do not
    depend on what the (unused) buffer holds, and the pictures show no buffer."""
    preset = EBM.presets["short-run"].model
    model = EBM(EBMConfig(channels=4, hidden=8, **{**preset, "sgld_steps": 2, "sample_steps": 2}), (1, 8, 8))
    negatives = []
    for fill in (-1.0, 1.0):
        model.replay.fill_(fill)
        torch.manual_seed(0)
        negatives.append(model.negatives(5))
    assert torch.equal(*negatives)
    with_buffer = EBM(EBMConfig(channels=4, hidden=8, buffer_size=4, sgld_steps=1, sample_steps=2), (1, 8, 8))
    g = torch.Generator().manual_seed(0)
    assert set(model.pictures(torch.rand(4, 1, 8, 8), g, quick=True)) == {"samples"}
    assert set(with_buffer.pictures(torch.rand(4, 1, 8, 8), g, quick=True)) == {"samples", "buffer"}


def test_exploding_energies_stop_training_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    from genzoo import runs
    from genzoo.config import EvalConfig, TrainConfig
    from genzoo.errors import TrainingDiverged
    from genzoo.trainer import train_run

    cfg = runs.RunConfig(family="ebm", model=EBMConfig(hidden=8, depth=1, buffer_size=64, sgld_steps=1),
                         train=TrainConfig(dataset="toy-ring", subset=256, batch_size=64, epochs=2),
                         eval=EvalConfig(n=10))
    original = EBM.model_energy
    checkpoint = tmp_path / "run" / runs.CHECKPOINT

    def exploding(self, x):  # fine for the first epoch, then the energies explode
        e = original(self, x)
        return e * 1e9 if self.training and checkpoint.is_file() else e

    monkeypatch.setattr(EBM, "model_energy", exploding)
    with pytest.raises(TrainingDiverged, match=r"energies reached .* last good checkpoint .* \(step 4\) is kept"):
        train_run(cfg, tmp_path / "run", log=lambda m: None)
    assert (tmp_path / "run" / runs.CHECKPOINT).is_file()


def test_ais_estimate_of_log_z_agrees_with_the_grid_on_toy_data(tmp_path, run_cli):
    import json

    code, _, err = run_cli("train", "ebm", "--dataset", "toy-ring", "--subset", "256", "--batch-size", "64",
                           "--epochs", "2", "--hidden", "16", "--depth", "1", "--buffer-size", "64",
                           "--sgld-steps", "5", "--out", tmp_path / "ebm", "--eval-n", "200")
    assert code == 0, err
    code, out, err = run_cli("eval", tmp_path / "ebm", "--n", "200", "--ais-chains", "200",
                             "--ais-temperatures", "300", "--ais-step", "0.05")
    assert code == 0, err
    r = json.loads((tmp_path / "ebm" / "eval-test.json").read_text())
    assert abs(r["log_z_ais"] - r["log_z_grid"]) < max(4 * r["log_z_ais_stderr"], 0.02)
    assert r["log_z_ais_stderr"] < 0.05 and r["ais_ess"] > 50
    # the NLL is E(x) averaged over the test points plus log Z
    model = __import__("genzoo").load_run(tmp_path / "ebm").model
    from genzoo.data import load_dataset
    x = load_dataset("toy-ring").test.images[:200].float()
    with torch.no_grad():
        assert r["nll_ais_nats"] == pytest.approx(model.energy(x).double().mean().item() + r["log_z_ais"], rel=1e-6)
    assert "log Z (AIS)" in out and "on the grid" in out


def test_clamped_sgld_gradient_bounds_each_pixels_move():
    """--grad-clamp c: a pixel moves at most step_size * c per noiseless step, however steep the energy, and a
    gentle gradient (below c) is followed unchanged."""
    model = EBM(EBMConfig(hidden=4, depth=1, step_size=10.0, noise=0.0, grad_clamp=0.03, buffer_size=1), (2,))
    model.net = Quadratic(torch.tensor([0.0, 0.0]), 0.01)  # gradient (x - m) / s^2: 1e4 per unit
    x = torch.tensor([[2.0, -1.0], [1e-7, -1e-7]])
    moved = model.langevin(x, steps=1) - x
    assert moved[0].tolist() == pytest.approx([-0.3, 0.3])  # clamped: step_size * c
    assert moved[1].tolist() == pytest.approx((-10.0 * x[1] / 1e-4).tolist())  # 1e-3 < c: followed as it is


def test_data_noise_widens_the_positive_examples_only():
    torch.manual_seed(0)
    model = EBM(EBMConfig(channels=4, hidden=8, buffer_size=4, sgld_steps=1, data_noise=0.05), (1, 8, 8))
    seen = []
    model.model_energy = lambda x: seen.append(x.detach()) or x.flatten(1).sum(1)
    x = torch.full((64, 1, 8, 8), 0.5)  # model space 0: far from the clamp at +-1
    model.loss(x)
    positive = seen[-2]  # after the negatives' SGLD: E(x+), then E(x-)
    assert positive.std().item() == pytest.approx(0.05, rel=0.05) and positive.mean().abs() < 0.005
    model.cfg.data_noise = 0.0
    seen.clear()
    model.loss(x)
    assert torch.equal(seen[-2], torch.zeros_like(seen[-2]))
