"""Run folders: save -> load -> identical outputs, strict loading, damaged files, atomic writes."""

import dataclasses
import json
import os

import pytest
import torch

from conftest import tiny_vae_config
from genzoo import load_run, runs, storage
from genzoo.errors import ConfigError, RunError
from genzoo.models.vae import VAE, VAEConfig


def write_run(folder, cfg=None, model=None):
    cfg = cfg or tiny_vae_config()
    folder.mkdir(parents=True, exist_ok=True)
    storage.write_json(folder / runs.CONFIG, cfg.to_json())
    model = model or runs.build_model(cfg, (1, 28, 28))
    storage.save_tensors(folder / runs.MODEL, model.state_dict())
    return model


def test_save_then_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(5)
    model = write_run(tmp_path / "run").eval()
    run = load_run(tmp_path / "run")
    assert run.config.to_json() == tiny_vae_config().to_json()
    assert not run.model.training
    z = torch.randn(10, 4)
    x = torch.rand(10, 1, 28, 28).bernoulli()
    assert torch.equal(model.decode(z), run.model.decode(z))
    assert all(torch.equal(a, b) for a, b in zip(model.encode(x), run.model.encode(x)))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(model.sample(4, g1), run.model.sample(4, g2))


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RunError, match="not a run folder.*no such directory"):
        load_run(tmp_path / "nowhere")
    with pytest.raises(RunError, match="not a run folder.*no config.json"):
        load_run(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"family": "vae"}', "lacks model, train, eval"),
])
def test_damaged_config(tmp_path, text, message):
    write_run(tmp_path)
    (tmp_path / runs.CONFIG).write_text(text)
    with pytest.raises(RunError, match=message):
        load_run(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(family="vqvae"), "unknown model family 'vqvae'"),
    (lambda c: c["model"].update(latent_dim=0), "latent_dim must be at least 1"),
    (lambda c: c["model"].update(latent_dim="32"), "latent_dim must be an integer"),
    (lambda c: c["train"].update(colour="blue"), "unknown setting"),
    (lambda c: c["train"].update(dataset="cifar"), "dataset must be one of"),
])
def test_invalid_config_values(tmp_path, edit, message):
    write_run(tmp_path)
    data = json.loads((tmp_path / runs.CONFIG).read_text())
    edit(data)
    (tmp_path / runs.CONFIG).write_text(json.dumps(data))
    with pytest.raises(RunError, match=message):
        load_run(tmp_path)


def test_damaged_or_mismatched_weights(tmp_path):
    write_run(tmp_path)
    weights = tmp_path / runs.MODEL
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(RunError, match="not a readable safetensors file"):
        load_run(tmp_path)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(RunError, match="not a readable safetensors file"):
        load_run(tmp_path)
    other = VAE(VAEConfig(latent_dim=4, hidden=64, depth=1), (1, 28, 28))  # another width
    storage.save_tensors(weights, other.state_dict())
    with pytest.raises(RunError, match="does not match the model in config.json: tensor"):
        load_run(tmp_path)
    deeper = VAE(VAEConfig(latent_dim=4, hidden=32, depth=2), (1, 28, 28))
    storage.save_tensors(weights, deeper.state_dict())
    with pytest.raises(RunError, match="unexpected tensor"):
        load_run(tmp_path)
    weights.unlink()
    with pytest.raises(RunError, match="has no model.safetensors"):
        load_run(tmp_path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "summary.json"
    storage.write_json(target, {"good": 1})

    def fails_halfway(tmp):
        with open(tmp, "w") as f:
            f.write('{"half')
        raise OSError(28, "No space left on device")

    with pytest.raises(RunError, match=r"could not write .*summary.json \(No space left on device\); the "
                                       r"previous file is intact"):
        storage.atomic_write(target, fails_halfway)
    assert json.loads(target.read_text()) == {"good": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_second_training_of_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    from conftest import tiny_vae_config

    from genzoo import runs
    from genzoo.errors import RunError
    from genzoo.trainer import train_run

    cfg = tiny_vae_config(epochs=1)
    with storage.training_lock(tmp_path / "run"):  # as another process training it would
        with pytest.raises(RunError, match=rf"is being trained by another process \(pid {os.getpid()}\)"):
            train_run(cfg, tmp_path / "run", log=lambda m: None)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [storage.LOCK]  # nothing else was written
    train_run(cfg, tmp_path / "run", log=lambda m: None)  # released: the training goes ahead
    assert (tmp_path / "run" / runs.SUMMARY).is_file()


def test_the_lock_is_dropped_when_its_process_is_killed(tmp_path):
    import subprocess
    import sys
    import time

    from genzoo import storage

    code = ("import sys, time; from genzoo import storage\n"
            f"with storage.training_lock({str(tmp_path / 'run')!r}):\n    print('locked', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    from genzoo.errors import RunError
    with pytest.raises(RunError, match=f"pid {child.pid}"), storage.training_lock(tmp_path / "run"):
        pass
    child.kill()  # SIGKILL: no clean-up runs in the child
    child.wait()
    time.sleep(0.1)
    with storage.training_lock(tmp_path / "run"):
        pass


class _Payload:
    """Unpickling this creates a marker file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["model.safetensors", "checkpoint.safetensors"])
def test_a_pickle_in_place_of_the_weights_executes_nothing_and_is_refused(tmp_path, name):
    import pickle

    from conftest import tiny_vae_config

    from genzoo.trainer import train_run

    run = tmp_path / "run"
    train_run(tiny_vae_config(epochs=1), run, log=lambda m: None)
    marker = tmp_path / "pwned"
    (run / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(RunError, match="not a readable safetensors file"):
        if name == runs.MODEL:
            load_run(run)
        else:
            train_run(tiny_vae_config(epochs=2), run, resume=True, log=lambda m: None)
    assert not marker.exists()


def test_a_run_folder_with_only_a_torch_save_file_explains_the_refusal(tmp_path):
    import pickle

    from conftest import tiny_vae_config

    from genzoo.trainer import train_run

    run = tmp_path / "run"
    train_run(tiny_vae_config(epochs=1), run, log=lambda m: None)
    (run / runs.MODEL).unlink()
    marker = tmp_path / "pwned"
    (run / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(RunError, match=r"only model\.pt, a pickle file; genzoo never unpickles"):
        load_run(run)
    assert not marker.exists()


def test_a_safetensors_header_that_lies_about_its_sizes_is_refused(tmp_path):
    import struct

    from genzoo.errors import RunError

    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)  # claims 4 TiB, holds 16 bytes
    with pytest.raises(RunError, match="not a readable safetensors file"):
        storage.load_tensors(path)


def test_a_resume_under_a_time_limit_already_spent_is_one_sentence_and_changes_nothing(tmp_path):
    """--time-limit counts every sitting's minutes: resuming with a limit the run has already used would stop at
    once, so it is refused before anything in the run folder is written."""
    from conftest import tiny_vae_config

    from genzoo.trainer import train_run

    run = tmp_path / "run"
    train_run(tiny_vae_config(epochs=1), run, log=lambda m: None)
    spent = storage.read_json(run / runs.SUMMARY)["train_wall_time_s"] / 60
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"has trained [0-9.]+ minutes already, and --time-limit counts"):
        train_run(tiny_vae_config(epochs=2, time_limit=spent / 2), run, resume=True, log=lambda m: None)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    lines = []
    train_run(tiny_vae_config(epochs=2, time_limit=spent + 10), run, resume=True, log=lines.append)
    assert any(line.startswith(f"resuming {run} at epoch 2, step 8, after") for line in lines)


def test_a_resumed_channels_last_network_gets_adams_moments_in_its_own_layout(tmp_path):
    """A checkpoint stores Adam's moments contiguous; a channels-last network (the layout on a GPU in bf16) must get
    them back in its parameters' strides, or CUDA's fused Adam refuses the first resumed step (seen on an H200)."""
    def network():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).to(
            memory_format=torch.channels_last)

    x = torch.randn(3, 2, 9, 9).to(memory_format=torch.channels_last)
    net = network()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net(x).square().mean().backward()
    opt.step()
    weight = net[0].weight
    assert not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    runs.save_checkpoint(tmp_path / "ck.safetensors", net, None, {"model": opt}, {}, {"step": 1})

    resumed = network()
    resumed_opt = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    runs.load_checkpoint(tmp_path / "ck.safetensors", resumed, None, {"model": resumed_opt}, torch.device("cpu"))
    for param in resumed.parameters():
        state = resumed_opt.state[param]
        for name in ("exp_avg", "exp_avg_sq"):
            assert state[name].stride() == param.stride(), name
            torch.testing.assert_close(state[name], opt.state[dict(zip(resumed.parameters(), net.parameters()))[
                param]][name], rtol=0, atol=0)


def test_init_from_copies_every_parameter_and_leaves_buffers_and_the_rng_alone(tmp_path):
    """--init-from (fine-tuning) starts from another run's parameters, exactly; the new run's buffers follow its
    own settings, and loading the source draws nothing from the global RNG (the run's data order and noise are
    those of the same run from scratch)."""
    from genzoo.models.ebm import EBMConfig

    tiny = tiny_vae_config()
    cfg = runs.RunConfig("ebm", EBMConfig(channels=4, hidden=8, buffer_size=16), tiny.train, tiny.eval)
    torch.manual_seed(11)
    source = write_run(tmp_path / "source", cfg)  # an EBM: its chains are a buffer
    torch.manual_seed(12)
    model = runs.build_model(cfg, (1, 28, 28))
    before = {k: p.clone() for k, p in model.named_parameters()}
    assert len(list(model.named_buffers())) > 0
    with torch.no_grad():
        for _, b in model.named_buffers():  # mark the buffers: none may be overwritten by the source's
            b.add_(1)
    marked = {k: v.clone() for k, v in model.named_buffers()}
    state = torch.get_rng_state()
    digest = runs.start_from(model, cfg.model, str(tmp_path / "source"))
    assert torch.equal(torch.get_rng_state(), state)
    from genzoo.data.fetch import sha256_file

    assert digest == sha256_file(tmp_path / "source" / runs.MODEL)
    theirs = dict(source.named_parameters())
    assert all(torch.equal(p, theirs[k]) for k, p in model.named_parameters())
    assert not any(torch.equal(p, before[k]) for k, p in model.named_parameters())
    assert all(torch.equal(v, marked[k]) for k, v in model.named_buffers())


def test_init_from_another_network_or_family_is_one_sentence_naming_the_settings_to_give(tmp_path):
    write_run(tmp_path / "source")
    wider = tiny_vae_config()
    wider.model.hidden = 48
    model = runs.build_model(wider, (1, 28, 28))
    with pytest.raises(ConfigError, match=r"another network: parameter '.*' is \(.*\) there and \(.*\) here; its "
                                          r"settings that differ from this run's: --hidden 32\.$"):
        runs.start_from(model, wider.model, str(tmp_path / "source"))
    from genzoo.models.ebm import EBMConfig
    tiny = tiny_vae_config()
    ebm = runs.build_model(runs.RunConfig("ebm", EBMConfig(), tiny.train, tiny.eval), (1, 28, 28))
    with pytest.raises(ConfigError, match="is of the family vae; this run trains ebm"):
        runs.start_from(ebm, ebm.cfg, str(tmp_path / "source"))


def test_a_fine_tuned_run_resumes_from_its_checkpoint_without_its_source(tmp_path):
    """The source's weights are read once, when the run starts; the run then resumes like any other, even
    after the source is gone, and takes the same steps as an uninterrupted fine-tuning."""
    import shutil

    from genzoo.trainer import train_run

    train_run(tiny_vae_config(epochs=1), tmp_path / "source", log=lambda m: None)
    init = str(tmp_path / "source")
    lines = []
    train_run(tiny_vae_config(epochs=2, init_from=init, final_eval="skip"), tmp_path / "whole", log=lines.append)
    assert f"starting from the weights of {init}" in lines
    train_run(tiny_vae_config(epochs=1, init_from=init, final_eval="skip"), tmp_path / "cut", log=lambda m: None)
    shutil.rmtree(tmp_path / "source")
    lines = []
    train_run(tiny_vae_config(epochs=2, init_from=init, final_eval="skip"), tmp_path / "cut", resume=True,
              log=lines.append)
    assert not any(line.startswith("starting from the weights") for line in lines)
    whole, cut = load_run(tmp_path / "whole").model, load_run(tmp_path / "cut").model
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), cut.state_dict().values()))


def test_a_fine_tuning_run_takes_its_sources_network_settings_unless_told_otherwise(tmp_path, run_cli):
    write_run(tmp_path / "source")  # latent_dim 4, hidden 32, depth 1: none of them the VAE's defaults
    cfg = runs.new_config("vae", {"train_k": 2}, {"init_from": str(tmp_path / "source")})
    assert dataclasses.asdict(cfg.model) == {**dataclasses.asdict(tiny_vae_config().model), "train_k": 2}
    code, out, err = run_cli("train", "vae", "--init-from", tmp_path / "source", "--subset", 64, "--max-steps", 1,
                             "--final-eval", "skip", "--out", tmp_path / "tuned")
    assert code == 0, err
    assert f"starting from the weights of {tmp_path / 'source'}" in out
    assert runs.read_config(tmp_path / "tuned").model == tiny_vae_config().model
    from genzoo.data.fetch import sha256_file

    digest = sha256_file(tmp_path / "source" / runs.MODEL)  # which weights it started from, recorded with the run
    assert runs.read_config(tmp_path / "tuned").train.init_digest == digest


def test_a_class_conditional_source_on_unlabelled_images_is_one_sentence(tmp_path):
    from PIL import Image

    from genzoo.models.flow import FlowConfig

    (tmp_path / "glyphs").mkdir()
    for i in range(4):
        Image.new("L", (28, 28), 40 * i).save(tmp_path / "glyphs" / f"{i}.png")
    tiny = tiny_vae_config()
    source = runs.RunConfig("flow", FlowConfig(channels=4, class_cond=True, num_classes=10), tiny.train, tiny.eval)
    write_run(tmp_path / "source", source)
    with pytest.raises(ConfigError, match=r"is class-conditional, and .*glyphs has no class subfolders: fine-tune it "
                                          r"on images sorted into one subfolder per class\.$"):
        runs.new_config("flow", {}, {"init_from": str(tmp_path / "source"), "dataset": str(tmp_path / "glyphs")})
