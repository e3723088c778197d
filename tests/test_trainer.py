"""The trainer: exact resumption, clean stops on signals, divergence that keeps the last good checkpoint."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_vae_config
from genzoo import runs, storage
from genzoo.errors import TrainingDiverged
from genzoo.models.vae import VAE
from genzoo.trainer import Interrupted, learning_rate, train_run

QUIET = dict(log=lambda m: None, progress_bar=False)


def checkpoint_tensors(run_dir):
    return load_file(str(run_dir / runs.CHECKPOINT))


def assert_same_state(a, b):
    """Every tensor of two checkpoints (weights, EMA, optimizer, RNG) equal to the bit, metrics equal."""
    ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds")} for r in rows]
    assert strip(runs.read_metrics(a)) == strip(runs.read_metrics(b))


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_after_an_epoch_equals_uninterrupted(tmp_path, ema_decay):
    full = train_run(tiny_vae_config(epochs=2, ema_decay=ema_decay), tmp_path / "full", **QUIET)
    train_run(tiny_vae_config(epochs=1, ema_decay=ema_decay), tmp_path / "part", **QUIET)
    resumed = train_run(tiny_vae_config(epochs=2, ema_decay=ema_decay), tmp_path / "part", resume=True, **QUIET)
    assert full["steps"] == resumed["steps"] == 16
    assert_same_state(tmp_path / "full", tmp_path / "part")
    assert full["eval"] == resumed["eval"]


def test_learning_rate_schedules():
    assert [learning_rate(s, 100, 1.0, "constant", 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cosine = [learning_rate(s, 100, 2.0, "cosine", 0) for s in range(101)]
    assert cosine[0] == 2.0 and cosine[50] == pytest.approx(1.0) and cosine[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))  # monotone decay
    assert learning_rate(10, 100, 1.0, "cosine", 10) == 1.0  # cosine starts after the warm-up


def test_resume_in_the_middle_of_an_epoch_equals_uninterrupted(tmp_path):
    sched = dict(lr_schedule="cosine", warmup_steps=3)
    train_run(tiny_vae_config(epochs=2, **sched), tmp_path / "full", **QUIET)
    stopped = train_run(tiny_vae_config(epochs=2, max_steps=5, **sched), tmp_path / "part", **QUIET)
    assert stopped["steps"] == 5 and not stopped["finished"]
    assert (tmp_path / "part" / "samples.png").is_file()  # --max-steps still writes a complete run folder
    assert runs.read_metrics(tmp_path / "part")[-1]["partial"] is True
    train_run(tiny_vae_config(epochs=2, max_steps=11, **sched), tmp_path / "part", resume=True, **QUIET)  # across epochs
    train_run(tiny_vae_config(epochs=2, **sched), tmp_path / "part", resume=True, **QUIET)
    assert_same_state(tmp_path / "full", tmp_path / "part")


@pytest.mark.parametrize("handler_before", ["default", "ignored"])
def test_sigint_finishes_the_step_saves_and_resumes_exactly(tmp_path, monkeypatch, handler_before):
    # A suite started in the background (`pytest &`, nohup, some CI runners) begins with SIGINT ignored; the
    # trainer catches SIGINT either way and gives back whatever handler it found.
    start = signal.default_int_handler if handler_before == "default" else signal.SIG_IGN
    previous = signal.signal(signal.SIGINT, start)
    try:
        check_sigint_run(tmp_path, monkeypatch, start)
    finally:
        signal.signal(signal.SIGINT, previous)


def check_sigint_run(tmp_path, monkeypatch, start):
    train_run(tiny_vae_config(epochs=2, ema_decay=0.5), tmp_path / "full", **QUIET)
    calls = {"n": 0}
    original = VAE.loss

    def loss_then_signal(self, x, y=None):
        calls["n"] += 1
        if calls["n"] == 11:  # in the middle of the second epoch
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, y)

    monkeypatch.setattr(VAE, "loss", loss_then_signal)
    with pytest.raises(Interrupted, match="SIGINT after step 11.*--resume"):
        train_run(tiny_vae_config(epochs=2, ema_decay=0.5), tmp_path / "part", **QUIET)
    monkeypatch.setattr(VAE, "loss", original)
    meta = json.loads(storage.load_tensors(tmp_path / "part" / runs.CHECKPOINT)[1]["progress"])
    assert (meta["step"], meta["epoch"], meta["batch"]) == (11, 1, 3)
    assert signal.getsignal(signal.SIGINT) is start  # the handler is given back
    train_run(tiny_vae_config(epochs=2, ema_decay=0.5), tmp_path / "part", resume=True, **QUIET)
    assert_same_state(tmp_path / "full", tmp_path / "part")


def test_a_time_limit_stops_with_a_complete_run_folder(tmp_path):
    summary = train_run(tiny_vae_config(epochs=50, time_limit=1e-9), tmp_path / "run", **QUIET)
    assert summary["steps"] == 1 and not summary["finished"]  # the first step already uses the budget
    assert (tmp_path / "run" / "samples.png").is_file() and (tmp_path / "run" / "summary.json").is_file()


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = VAE.loss

    def loss_goes_nan(self, x, y=None):
        calls["n"] += 1
        out = original(self, x, y)
        return out * float("nan") if calls["n"] == 12 else out

    monkeypatch.setattr(VAE, "loss", loss_goes_nan)
    with pytest.raises(TrainingDiverged, match=r"nan at step 12 .*last good checkpoint .*\(step 8\)"):
        train_run(tiny_vae_config(epochs=3), tmp_path / "run", **QUIET)
    tensors, meta = storage.load_tensors(tmp_path / "run" / runs.CHECKPOINT)
    assert json.loads(meta["progress"])["step"] == 8
    weights = load_file(str(tmp_path / "run" / runs.MODEL))
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    assert all(torch.equal(weights[k], tensors[f"model.{k}"]) for k in weights)  # model file = last good weights
    assert len(runs.read_metrics(tmp_path / "run")) == 1
    monkeypatch.setattr(VAE, "loss", original)
    resumed = train_run(tiny_vae_config(epochs=3), tmp_path / "run", resume=True, **QUIET)  # and it can go on
    assert resumed["steps"] == 24 and resumed["finished"]


def test_training_lowers_the_loss_and_writes_the_run_folder(tmp_path):
    summary = train_run(tiny_vae_config(epochs=3), tmp_path / "run", **QUIET)
    rows = runs.read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_neg_elbo"] < rows[0]["val_neg_elbo"]
    for name in ("config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl", "summary.json",
                 "samples.png", "recon.png", "interp.png", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    ev = summary["eval"]
    assert ev["n_examples"] == 64 and ev["split"] == "test" and ev["iwae_k"] == 8
    assert ev["neg_elbo_nats"] >= ev["nll_nats"] > 0  # IWAE-8 is tighter than the ELBO on average
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no temporary files left (.lock stays: only a held lock means anything)


def tiny_gan_config(**train):
    from genzoo.config import EvalConfig, TrainConfig
    from genzoo.models.gan import GANConfig
    t = dict(dataset="toy-ring", epochs=2, batch_size=64, subset=512, lr=1e-3, seed=5)
    t.update(train)
    return runs.RunConfig(family="gan", model=GANConfig(hidden=16, depth=1, latent_dim=4, n_critic=3),
                          train=TrainConfig(**t), eval=EvalConfig(n=200))


def test_two_player_training_resumes_exactly(tmp_path):
    full = train_run(tiny_gan_config(), tmp_path / "full", **QUIET)
    train_run(tiny_gan_config(max_steps=11), tmp_path / "part", **QUIET)  # mid-epoch, mid n_critic cycle
    resumed = train_run(tiny_gan_config(), tmp_path / "part", resume=True, **QUIET)
    assert full["steps"] == resumed["steps"] == 16
    keys = checkpoint_tensors(tmp_path / "full").keys()
    assert any(k.startswith("optim.generator.") for k in keys) and any(k.startswith("optim.discriminator.")
                                                                       for k in keys)
    assert_same_state(tmp_path / "full", tmp_path / "part")
    assert full["eval"] == resumed["eval"] and 0 <= full["eval"]["modes_covered"] <= 8


def test_ema_warmup_follows_its_closed_form(tmp_path):
    from genzoo.trainer import ema_decay_at

    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1) and ema_decay_at(20000, 0.999, True) == 0.999
    assert ema_decay_at(3, 0.999, False) == 0.999
    cfg = tiny_vae_config(ema_decay=0.999, ema_warmup=True, max_steps=1)
    train_run(cfg, tmp_path / "run", **QUIET)
    w1 = {k[6:]: v for k, v in storage.load_tensors(tmp_path / "run" / runs.CHECKPOINT)[0].items()
          if k.startswith("model.")}
    train_run(tiny_vae_config(ema_decay=0.999, ema_warmup=True, max_steps=2), tmp_path / "run", resume=True, **QUIET)
    tensors = storage.load_tensors(tmp_path / "run" / runs.CHECKPOINT)[0]
    d = ema_decay_at(1, 0.999, True)  # the second update; the first copies the weights
    for name, w0 in w1.items():
        w2, ema = tensors[f"model.{name}"], tensors[f"ema.module.{name}"]
        if w0.is_floating_point():
            torch.testing.assert_close(ema, d * w0 + (1 - d) * w2, rtol=1e-5, atol=1e-6)


def test_the_ema_of_a_spectrally_normalised_layer_keeps_its_norm_at_one():
    """A layer whose leading singular vector switches while it trains (as in a GAN's discriminator, where the top
    singular values are close): averaged power-iteration vectors are short and mix the two directions, so the
    averaged layer would be divided by a sigma far too small. Taken from the live layer, they keep the averaged
    layer's effective spectral norm near 1."""
    from torch.nn.utils.parametrizations import spectral_norm
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from genzoo.trainer import update_ema

    torch.manual_seed(0)
    layer = spectral_norm(torch.nn.Linear(2, 2, bias=False), n_power_iterations=10)
    ema = AveragedModel(layer, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    weights = torch.tensor([[3.0, 0.3], [0.3, 1.0]]), torch.tensor([[1.0, 0.3], [0.3, 3.0]])
    for k in range(60):  # the top singular vector alternates between near e0 and near e1
        with torch.no_grad():
            layer.parametrizations.weight.original.copy_(weights[k % 2])
        layer.train()
        layer(torch.ones(1, 2))  # power iteration on the live weight
        update_ema(ema, layer)
    ema.module.eval()
    norm = torch.linalg.matrix_norm(ema.module.weight.detach(), ord=2)  # W_ema / sigma(stored u, v)
    assert 0.95 < norm < 1.15, norm
    for name in ("_u", "_v"):
        torch.testing.assert_close(getattr(ema.module.parametrizations.weight[0], name),
                                   getattr(layer.parametrizations.weight[0], name))


def test_a_checkpoint_of_the_unfused_adam_resumes_with_the_fused_kernel_to_round_off(tmp_path, monkeypatch):
    """genzoo used to train with Adam's foreach kernel and saved that choice in its checkpoints; a resume takes
    the kernel of the resuming process (fused on CPU) with the saved moments and step, so it ends where an
    uninterrupted fused run ends, to round-off — a lost moment or step count would be off by far more."""
    import genzoo.trainer as trainer

    train_run(tiny_vae_config(epochs=2), tmp_path / "full", **QUIET)
    fused = trainer.adam
    monkeypatch.setattr(trainer, "adam", lambda params, device, **o: torch.optim.Adam(params, **o))
    train_run(tiny_vae_config(epochs=2, max_steps=5), tmp_path / "part", **QUIET)
    assert json.loads(storage.load_tensors(tmp_path / "part" / runs.CHECKPOINT)[1]["param_groups"])["model"][0][
        "fused"] is None
    monkeypatch.setattr(trainer, "adam", fused)
    train_run(tiny_vae_config(epochs=2), tmp_path / "part", resume=True, **QUIET)
    groups = json.loads(storage.load_tensors(tmp_path / "part" / runs.CHECKPOINT)[1]["param_groups"])
    assert groups["model"][0]["fused"] is True
    a, b = checkpoint_tensors(tmp_path / "full"), checkpoint_tensors(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith(("model.", "optim.")):
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_compiled_training_agrees_with_the_eager_one_and_its_checkpoint_resumes_eagerly(tmp_path):
    """--compile runs the networks through inductor's kernels: the same arithmetic in another order, so after five
    steps the weights and Adam's moments agree with an eager run's to round-off, under the same names (the state
    dict does not depend on compiling), and the compiled run resumes without it to where the eager run ends."""
    quick = dict(epochs=1, final_eval="skip")
    train_run(tiny_vae_config(max_steps=5, **quick), tmp_path / "eager", **QUIET)
    lines = []
    train_run(tiny_vae_config(max_steps=5, compile=True, **quick), tmp_path / "compiled", log=lines.append,
              progress_bar=False)
    assert "compiled (torch.compile" in lines[0]

    def assert_close_state(a, b):
        ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)
        assert ta.keys() == tb.keys()
        for k in ta:
            if k.startswith(("model.", "optim.")):
                torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-5, msg=k)

    assert_close_state(tmp_path / "eager", tmp_path / "compiled")
    for name in ("eager", "compiled"):
        train_run(tiny_vae_config(**quick), tmp_path / name, resume=True, **QUIET)
    assert runs.checkpoint_step(tmp_path / "compiled" / runs.CHECKPOINT) == 8
    assert_close_state(tmp_path / "eager", tmp_path / "compiled")


def test_compile_without_a_compiler_is_refused_in_one_sentence_before_training(tmp_path, monkeypatch):
    import genzoo.devices as devices
    from genzoo.errors import ConfigError

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"--compile needs a C\+\+ compiler .* train without --compile\.$"):
        train_run(tiny_vae_config(compile=True), tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / runs.CHECKPOINT).exists()


def test_a_compiler_failure_mid_run_is_one_sentence_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """An inductor or dynamo error during a compiled step becomes one sentence that says whether a checkpoint
    exists; a resumed run's checkpoint stays at the step it had."""
    import torch._dynamo.exc

    import genzoo.trainer as trainer
    from genzoo.errors import ConfigError
    from genzoo.models.vae import VAE

    train_run(tiny_vae_config(max_steps=3, epochs=1, final_eval="skip"), tmp_path / "run", **QUIET)
    monkeypatch.setattr(trainer, "compiler_missing", lambda device: None)
    monkeypatch.setattr(trainer, "compile_networks", lambda model: ["encoder"])  # compiling is what fails below

    def fails(*args, **kwargs):
        raise torch._dynamo.exc.Unsupported("a graph break in a test")
    monkeypatch.setattr(VAE, "train_step", fails)
    with pytest.raises(ConfigError, match=r"^torch.compile failed \(a graph break in a test\); train without "
                                          r"--compile \(no checkpoint was written yet\)\.$"):
        train_run(tiny_vae_config(compile=True), tmp_path / "new", **QUIET)
    with pytest.raises(ConfigError, match=r"\(the run's last checkpoint is unchanged\)\.$"):
        train_run(tiny_vae_config(compile=True, epochs=2), tmp_path / "run", resume=True, **QUIET)
    assert runs.checkpoint_step(tmp_path / "run" / runs.CHECKPOINT) == 3
