"""The command line end to end on a small slice of MNIST, and every bad-input path: one sentence, exit 2."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_clear_error
from genzoo.models import FAMILIES

SMALL = ["--subset", "512", "--epochs", "1", "--batch-size", "64", "--latent-dim", "4", "--hidden", "32",
         "--eval-iwae-k", "8", "--eval-n", "64"]


def genzoo(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "genzoo", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def train_once(tmp_path_factory, family, args):
    run = tmp_path_factory.mktemp("cli") / family
    p = genzoo("train", family, *args, "--out", run)
    assert p.returncode == 0, p.stderr
    return run, p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_once(tmp_path_factory, "vae", SMALL)


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_train_writes_a_complete_run_folder(trained):
    run, p = trained
    assert "neg_elbo" in p.stdout and "nats" in p.stdout and "Traceback" not in p.stderr
    for name in ("config.json", "model.safetensors", "checkpoint.safetensors", "metrics.jsonl", "summary.json",
                 "samples.png", "recon.png", "interp.png", "curves.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "vae" and config["model"]["latent_dim"] == 4 and config["train"]["subset"] == 512
    assert (config["train"]["lr"], config["train"]["lr_schedule"]) == (1e-3, "cosine")  # the VAE's own defaults
    assert config["eval"]["iwae_k"] == 8
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 8 and summary["images_per_s"] > 0
    assert summary["eval"]["n_examples"] == 64 and summary["eval"]["view"] == "binary"
    # samples.png is the 10 x 10 grid: 10 tiles of 28 px with 2 px padding, doubled
    assert Image.open(run / "samples.png").size == ((10 * 30 + 2) * 2,) * 2
    assert Image.open(run / "recon.png").size == ((8 * 30 + 2) * 2, (4 * 30 + 2) * 2)  # 16 pairs


def test_sample_is_reproducible(trained, tmp_path):
    run, _ = trained
    for name in ("a.png", "b.png"):
        assert genzoo("sample", run, "--n", 16, "--seed", 4, "--out", tmp_path / name).returncode == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert genzoo("sample", run, "--n", 16, "--seed", 5, "--out", tmp_path / "c.png").returncode == 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    assert Image.open(tmp_path / "a.png").size == ((4 * 30 + 2) * 2,) * 2


def test_eval_reproduces_the_training_summary(trained, run_cli):
    run, _ = trained
    code, out, err = run_cli("eval", run, "--iwae-k", 8, "--n", 64)
    assert code == 0, err
    assert "neg_elbo" in out and "IWAE bound, k=8" in out and "64 examples" in out
    written = json.loads((run / "eval-test.json").read_text())
    summary = json.loads((run / "summary.json").read_text())["eval"]
    for key in ("neg_elbo_nats", "nll_nats", "n_examples", "iwae_k"):
        assert written[key] == summary[key], key
    assert not (run / "eval-test.partial.safetensors").exists()  # its progress file goes once the result is written


def test_list_names_families_kinds_and_datasets(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    assert any(l.split()[:2] == ["vae", "bound"] for l in out.splitlines())
    assert "mnist" in out and "embedded" in out and "fashion-mnist" in out
    assert "--preset hour: 32-channel coupling nets for 8 epochs (cosine); test 1.570 bits/dim" in out
    assert "grey and colour images of height and width divisible by 2^(scales - 1) (4 by default)" in out


def test_a_preset_sets_its_values_over_the_defaults_and_given_flags_win(monkeypatch):
    from genzoo.errors import ConfigError
    from genzoo.runs import new_config

    plain, preset = new_config("realnvp"), new_config("realnvp", preset="hour")
    assert (plain.model.hidden, plain.train.epochs) != (32, 8)
    assert (preset.model.hidden, preset.train.epochs) == (32, 8)
    assert preset.train.lr == plain.train.lr  # what the preset does not name stays the family's default
    assert new_config("realnvp", train={"epochs": 2}, preset="hour").train.epochs == 2
    with pytest.raises(ConfigError, match="the vae family has no preset 'hour'; its presets: iwae."):
        new_config("vae", preset="hour")
    monkeypatch.setattr(FAMILIES["vae"], "presets", {})
    with pytest.raises(ConfigError, match="the vae family has no preset 'hour'; its presets: none"):
        new_config("vae", preset="hour")


@pytest.mark.parametrize("family, name", [(f, n) for f, cls in FAMILIES.items() for n in cls.presets])
def test_every_preset_is_a_valid_configuration_that_sets_what_it_names(family, name):
    from genzoo.runs import new_config

    preset, config = FAMILIES[family].presets[name], new_config(family, preset=name)
    for part, values in (("model", preset.model), ("train", preset.train)):
        for key, value in values.items():
            assert getattr(getattr(config, part), key) == value, (family, name, key)
    assert preset.about and preset.expect and (preset.model or preset.train)


@pytest.mark.parametrize("args, fragment", [
    (["train", "vqvae"], "invalid choice: 'vqvae'"),
    (["train", "vae", "--dataset", "cifar"], "--dataset must be one of mnist, fashion-mnist, cifar10, toy-ring, or a folder"),
    (["train", "vae", "--dataset", "no/such/folder"], "no/such/folder is not a folder of images"),
    (["train", "vae", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "vae", "--batch-size", "-3"], "--batch-size must be at least 1"),
    (["train", "vae", "--lr", "0"], "--lr must be greater than 0"),
    (["train", "vae", "--latent-dim", "ten"], "invalid int value: 'ten'"),
    (["train", "vae", "--ema-decay", "1.0"], "--ema-decay must be less than 1"),
    (["train", "vae", "--lr", "nan"], "--lr must be a finite number"),
    (["train", "vae", "--eval-iwae-k", "0"], "--eval-iwae-k must be at least 1"),
    (["train", "vae", "--resume"], "--resume needs --out"),
    (["sample", "RUN", "--n", "0"], "--n must be a positive integer"),
    (["sample", "RUN", "--out", "x.jpg"], "--out must name a .png file"),
    (["eval", "RUN", "--iwae-k", "0"], "--iwae-k must be at least 1"),
    (["eval", "RUN", "--split", "dev"], "invalid choice: 'dev'"),
    (["train", "realnvp", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train", "vae", "--image-size", "32"], "--image-size applies to a folder of images; mnist has its own"),
    (["train", "realnvp", "--preset", "hour", "--resume", "--out", "RUN"], "--preset applies to a new run"),
])
def test_bad_options_are_one_clear_sentence(run_cli, trained, args, fragment):
    run, _ = trained
    before = digest(run)
    code, _, err = run_cli(*[str(run) if a == "RUN" else a for a in args])
    assert_one_clear_error(code, err, fragment)
    assert digest(run) == before  # nothing saved is touched


def test_paths_that_are_not_runs(run_cli, tmp_path):
    code, _, err = run_cli("eval", tmp_path / "missing")
    assert_one_clear_error(code, err, "not a run folder")
    code, _, err = run_cli("sample", tmp_path)
    assert_one_clear_error(code, err, "not a run folder", "no config.json")


def test_damaged_run_files_are_refused_and_left_alone(run_cli, trained, tmp_path):
    import shutil
    run, _ = trained
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    code, _, err = run_cli("sample", broken)
    assert_one_clear_error(code, err, "model.safetensors", "not a readable safetensors file")
    shutil.copy(run / "model.safetensors", broken / "model.safetensors")
    (broken / "config.json").write_text('{"family": "vae", "model": ')
    before = digest(broken)
    code, _, err = run_cli("eval", broken)
    assert_one_clear_error(code, err, "config.json is damaged")
    code, _, err = run_cli("train", "vae", "--out", broken, "--resume")
    assert_one_clear_error(code, err, "config.json is damaged")
    assert digest(broken) == before


def test_a_saved_run_is_never_overwritten(run_cli, trained):
    run, _ = trained
    before = digest(run)
    code, _, err = run_cli("train", "vae", *SMALL, "--out", run)
    assert_one_clear_error(code, err, "already exists", "--resume")
    code, _, err = run_cli("train", "vae", "--out", run, "--resume", "--lr", "0.5")
    assert_one_clear_error(code, err, "--lr 0.5 differs from the run's saved value")
    code, _, err = run_cli("train", "vae", "--out", run, "--resume", "--dataset", "fashion-mnist")
    assert_one_clear_error(code, err, "--dataset fashion-mnist differs")
    assert digest(run) == before


def test_resume_from_the_command_line_extends_a_run(run_cli, trained, tmp_path):
    import shutil
    run, _ = trained
    copy = tmp_path / "more"
    shutil.copytree(run, copy)
    code, out, err = run_cli("train", "vae", "--out", copy, "--resume", "--epochs", "2", "--precision", "fp32")
    assert code == 0, err
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["steps"] == 16
    saved = json.loads((copy / "config.json").read_text())["train"]
    assert saved["epochs"] == 2 and saved["precision"] == "fp32" and summary["precision"] == "fp32"


# --- diffusion from the command line -----------------------------------------------------------------------
DDPM_SMALL = ["--subset", "256", "--epochs", "1", "--batch-size", "32", "--timesteps", "20", "--channels", "8",
              "--eval-n", "4", "--eval-ode-steps", "4", "--class-cond", "true"]


@pytest.fixture(scope="module")
def trained_ddpm(tmp_path_factory):
    return train_once(tmp_path_factory, "ddpm", DDPM_SMALL)


def test_ddpm_trains_and_writes_its_pictures(trained_ddpm):
    run, p = trained_ddpm
    assert "bits/dim" in p.stdout and "4 examples" in p.stdout
    for name in ("samples.png", "trajectory.png", "interp.png", "curves.png", "summary.json", "model.safetensors"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["ema_decay"] == 0.999 and config["model"]["class_cond"] is True  # diffusion defaults
    ev = json.loads((run / "summary.json").read_text())["eval"]
    assert ev["view"] == "uint8" and ev["neg_elbo_bits_per_dim"] > 0 and ev["n_examples"] == 4
    assert Image.open(run / "trajectory.png").size == ((10 * 30 + 2) * 2, (4 * 30 + 2) * 2)


def test_ddpm_sampling_options(trained_ddpm, tmp_path, run_cli):
    run, _ = trained_ddpm
    args = ["sample", run, "--n", 4, "--sampler", "ddim", "--steps", 5, "--eta", 0, "--class", 3, "--guidance", 2.0]
    for name in ("a.png", "b.png"):
        code, _, err = run_cli(*args, "--seed", 1, "--out", tmp_path / name)
        assert code == 0, err
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    code, _, err = run_cli("sample", run, "--n", 2, "--sampler", "ddpm", "--out", tmp_path / "c.png")
    assert code == 0, err
    for bad, fragment in ((["--steps", 21], "between 1 and the 20 training timesteps"),
                          (["--eta", -1], "--eta must be non-negative"),
                          (["--class", 12], "--class must be between 0 and 9"),
                          (["--sampler", "heun", "--eta", 0.5], "the heun sampler takes no --eta option"),
                          (["--sampler", "dpm++2m", "--spacing", "quadratic"], "takes --spacing karras or uniform"),
                          (["--sampler", "euler2"], "--sampler must be one of"),
                          (["--temperature", 0.5], "the ddpm family's sampler takes no --temperature option"),
                          (["--guidance", -1], "--guidance must be non-negative"),
                          (["--eta", "nan"], "--eta must be a finite number")):
        code, _, err = run_cli("sample", run, "--n", 2, *bad, "--out", tmp_path / "d.png")
        assert_one_clear_error(code, err, fragment)


def test_sampling_in_bf16_stays_close_to_fp32(trained, tmp_path, run_cli):
    """--precision bf16 runs the network's forward passes in bf16: the picture of the decoder's means changes (so
    bf16 was used), but only by rounding."""
    run, _ = trained
    pictures = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.png"
        code, _, err = run_cli("sample", run, "--n", 16, "--precision", precision, "--out", out)
        assert code == 0, err
        pictures[precision] = np.asarray(Image.open(out).convert("L"), dtype=np.float64)
    difference = np.abs(pictures["bf16"] - pictures["fp32"])
    assert 0 < difference.mean() < 4.0, difference.mean()  # in 0..255 grey levels
    code, _, err = run_cli("sample", run, "--n", 2, "--precision", "fp16", "--out", tmp_path / "x.png")
    assert code == 2 and "--precision" in err


def test_sampler_options_a_family_does_not_take(trained, run_cli):
    run, _ = trained
    code, _, err = run_cli("sample", run, "--class", 3)
    assert_one_clear_error(code, err, "the vae family's sampler takes no --class option")
    code, _, err = run_cli("sample", run, "--steps", 10)
    assert_one_clear_error(code, err, "takes no --steps option")


def test_interpolation_between_two_image_files_is_the_models_path(trained, trained_ddpm, trained_pixelcnn, tmp_path,
                                                                  run_cli):
    """`genzoo sample RUN --interpolate A.png B.png` writes one row of --n frames: the model's own interpolate() of
    the two files read in its view (VAE: binarised; DDPM: the 8-bit integers, with --steps)."""
    import numpy as np
    from genzoo import runs
    from genzoo.plots import grid_image

    g = torch.Generator().manual_seed(0)
    files = []
    for name in ("a.png", "b.png"):
        pixels = torch.randint(0, 256, (28, 28), generator=g, dtype=torch.uint8)
        Image.fromarray(pixels.numpy(), mode="L").save(tmp_path / name)
        files.append(tmp_path / name)
    for (run, _), extra in ((trained, []), (trained_ddpm, ["--steps", 20])):
        out = tmp_path / f"{run.name}-path.png"
        code, stdout, err = run_cli("sample", run, "--interpolate", *files, "--n", 5, *extra, "--precision", "fp32",
                                    "--out", out)  # the library's interpolate() below runs in fp32
        assert code == 0 and "wrote 5 frames of the interpolation" in stdout, err
        model = runs.load_run(run).model
        a, b = (model.from_image(torch.from_numpy(np.asarray(Image.open(f)).copy())[None])[None] for f in files)
        expected = grid_image(model.interpolate(a, b, frames=5, **({"steps": 20} if extra else {})))
        written = np.asarray(Image.open(out).convert(expected.mode), dtype=np.int16)
        assert written.shape == np.asarray(expected).shape == ((30 + 2) * 2, (5 * 30 + 2) * 2)
        assert np.abs(written - np.asarray(expected, dtype=np.int16)).max() <= 1
    vae_run, ddpm_run, pixelcnn_run = trained[0], trained_ddpm[0], trained_pixelcnn[0]
    for run, bad, fragment in ((pixelcnn_run, [], "the pixelcnn family cannot interpolate between images"),
                               (vae_run, ["--n", 1], "--interpolate needs at least 2 frames"),
                               (vae_run, ["--steps", 5], "takes no --steps option"),
                               (ddpm_run, ["--eta", 0.5], "--interpolate takes no --eta"),
                               (vae_run, ["--complete", files[0]], "give one of them")):
        code, _, err = run_cli("sample", run, "--interpolate", *files, *bad, "--out", tmp_path / "bad.png")
        assert_one_clear_error(code, err, fragment)
    code, _, err = run_cli("sample", vae_run, "--interpolate", files[0], tmp_path / "missing.png")
    assert_one_clear_error(code, err, "missing.png does not exist")
    code, _, err = run_cli("sample", vae_run, "--interpolate", *files)  # no noise is drawn: no seed in the name
    assert code == 0 and (vae_run / "interpolation.png").is_file(), err


def test_bad_diffusion_options(run_cli):
    for args, fragment in ((["--schedule", "sigmoid"], "invalid choice: 'sigmoid'"),
                           (["--timesteps", "1"], "--timesteps must be at least 2"),
                           (["--channel-mult", "1,x"], "--channel-mult must be comma-separated integers"),
                           (["--class-cond", "maybe"], "expected true or false")):
        code, _, err = run_cli("train", "ddpm", *args)
        assert_one_clear_error(code, err, fragment)


# --- exact likelihoods from the command line ------------------------------------------------------------------
PIXELCNN_SMALL = ["--subset", "128", "--epochs", "1", "--batch-size", "32", "--channels", "8", "--layers", "3",
                  "--head-channels", "16", "--eval-n", "16"]


@pytest.fixture(scope="module")
def trained_pixelcnn(tmp_path_factory):
    return train_once(tmp_path_factory, "pixelcnn", PIXELCNN_SMALL + ["--head", "softmax"])


def test_pixelcnn_softmax_head_reports_bits_per_dim_and_completes_images(trained_pixelcnn, tmp_path, run_cli):
    run, p = trained_pixelcnn
    ev = json.loads((run / "summary.json").read_text())["eval"]
    assert ev["view"] == "uint8" and ev["n_examples"] == 16
    assert ev["nll_bits_per_dim"] == pytest.approx(ev["nll_nats"] / (784 * 0.6931471805599453))
    assert 0 < ev["nll_bits_per_dim"] < 9  # an untrained-ish model is near uniform: 8 bits/dim
    for name in ("samples.png", "completions.png", "curves.png"):
        assert (run / name).is_file(), name
    digit = tmp_path / "digit.png"
    Image.new("L", (28, 28), 200).save(digit)
    code, out, err = run_cli("sample", run, "--complete", digit, "--n", 3, "--temperature", 0.8,
                             "--out", tmp_path / "c.png")
    assert code == 0, err
    # a 2x2 grid of 28x28 cells (the given half and 3 completions), padded by 2 and scaled by 2
    assert Image.open(tmp_path / "c.png").size == ((2 * 30 + 2) * 2, (2 * 30 + 2) * 2)
    top = Image.open(tmp_path / "c.png").convert("L").getpixel((2 * 2 + 1, 2 * 2 + 1))
    assert top == 200  # the given top half is kept
    Image.new("L", (32, 32)).save(tmp_path / "big.png")
    (tmp_path / "junk.png").write_text("not an image")
    for args, fragment in ((["--complete", tmp_path / "big.png"], "is 32x32 pixels; this model takes 28x28"),
                           (["--complete", tmp_path / "junk.png"], "cannot be read as an image"),
                           (["--complete", tmp_path / "none.png"], "does not exist"),
                           (["--complete", digit, "--temperature", 0], "--temperature must be positive"),
                           (["--steps", 3], "takes no --steps option"),
                           (["--class", 3], "not trained with --class-cond")):
        code, _, err = run_cli("sample", run, *args, "--out", tmp_path / "x.png")
        assert_one_clear_error(code, err, fragment)


def test_a_class_conditional_pixelcnn_draws_the_class_asked_for(tmp_path_factory, tmp_path, run_cli):
    run, p = train_once(tmp_path_factory, "pixelcnn", PIXELCNN_SMALL + ["--class-cond", "true"])
    row = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["val_nll_given_class"] < row["val_nll"] + 5  # what the label is worth (after 4 steps: little)
    ev = json.loads((run / "summary.json").read_text())["eval"]
    assert ev["n_examples"] == 16 and ev["nll_nats"] > 0  # scored as the unconditional model: no labels needed
    # The label vectors start at zero (training starts unconditional) and 4 steps move them by ~1e-3, so a draw
    # for class 3 and one for class 5 can coincide pixel for pixel. A copy of the run with label vectors of unit
    # scale (the no-label row, the last, left as trained) makes what --class changes visible on any machine.
    from genzoo import storage
    import shutil
    run = Path(shutil.copytree(run, tmp_path / "run"))
    weights, meta = storage.load_tensors(run / "model.safetensors")
    tables = [k for k in weights if k.endswith("_label.weight")]
    assert tables  # the conditional net has per-layer label tables
    gen = torch.Generator().manual_seed(0)
    for k in tables:
        weights[k][:-1] = torch.randn(weights[k][:-1].shape, generator=gen)
    storage.save_tensors(run / "model.safetensors", weights, meta)
    pictures = {}
    for label, guidance in ((3, 1.0), (3, 1.0), (5, 1.0), (3, 0.0)):
        out = tmp_path / f"{label}-{guidance}-{len(pictures)}.png"
        code, _, err = run_cli("sample", run, "--n", 4, "--class", label, "--guidance", guidance, "--seed", 2,
                               "--out", out)
        assert code == 0, err
        pictures[out.name] = out.read_bytes()
    code, _, err = run_cli("sample", run, "--n", 4, "--seed", 2, "--out", tmp_path / "plain.png")
    assert code == 0, err
    a, again, five, unguided = pictures.values()
    assert a == again and a != five  # seeded, and the label changes what is drawn
    assert unguided == (tmp_path / "plain.png").read_bytes() != a  # w = 0: the unconditional model
    code, _, err = run_cli("sample", run, "--class", 10, "--out", tmp_path / "x.png")
    assert_one_clear_error(code, err, "--class must be between 0 and 9")


def test_realnvp_trains_samples_and_refuses_to_complete(tmp_path_factory, tmp_path, run_cli):
    run, p = train_once(tmp_path_factory, "realnvp", ["--subset", "128", "--epochs", "1", "--batch-size", "32",
                                                      "--hidden", "8", "--blocks", "1", "--eval-n", "16"])
    assert "bits/dim" in p.stdout and "upper bound on the NLL" in p.stdout
    for name in ("samples.png", "temperatures.png", "curves.png"):
        assert (run / name).is_file(), name
    code, _, err = run_cli("sample", run, "--n", 4, "--temperature", 0.7, "--out", tmp_path / "r.png")
    assert code == 0, err
    Image.new("L", (28, 28)).save(tmp_path / "d.png")
    code, _, err = run_cli("sample", run, "--complete", tmp_path / "d.png")
    assert_one_clear_error(code, err, "the realnvp family cannot complete an image")
    code, _, err = run_cli("train", "realnvp", "--scales", "4", "--out", tmp_path / "bad")
    assert_one_clear_error(code, err, "divisible by 8")
    assert not (tmp_path / "bad").exists()


# --- implicit and unnormalised families on the toy ring ------------------------------------------------------
def test_gan_and_ebm_train_on_the_toy_ring_and_report_against_its_density(tmp_path, run_cli):
    for family, extra in (("gan", ["--loss", "hinge"]), ("ebm", ["--sgld-steps", "2", "--buffer-size", "100"])):
        run = tmp_path / family
        code, out, err = run_cli("train", family, "--dataset", "toy-ring", "--subset", "256", "--epochs", "1",
                                 "--batch-size", "64", "--hidden", "16", "--eval-n", "300", *extra, "--out", run)
        assert code == 0, err
        assert "modes covered" in out and "of 8" in out and "(of 300)" in out
        ev = json.loads((run / "summary.json").read_text())["eval"]
        assert ev["view"] == "points" and ev["n_samples"] == 300
        assert ("kl_data_to_model_nats" in ev) == (family == "ebm")
        img = Image.open(run / "samples.png")
        assert img.size[1] == (120 + 4) * 2  # one row of density pictures
        code, out, err = run_cli("sample", run, "--n", 500, "--out", tmp_path / f"{family}.png")
        assert code == 0, err
    code, _, err = run_cli("train", "vae", "--dataset", "toy-ring", "--out", tmp_path / "vae")
    assert_one_clear_error(code, err, "the vae family models images; toy-ring is a set of 2-D points")
    assert not (tmp_path / "vae").exists()
    code, _, err = run_cli("train", "gan", "--loss", "wasserstein", "--out", tmp_path / "x")
    assert_one_clear_error(code, err, "invalid choice: 'wasserstein'")
    code, _, err = run_cli("eval", tmp_path / "gan")
    assert code == 0, err


def test_a_reader_that_goes_away_gets_no_traceback():
    # `genzoo list | head -1`: the pipe closes before genzoo writes; it must stop quietly.
    p = subprocess.Popen([sys.executable, "-m", "genzoo", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "Exception ignored" not in err, err


SMALL_NETS = {  # each family's smallest sensible network, so that a two-step smoke run takes seconds
    "vae": ["--hidden", 32, "--latent-dim", 4],
    "ddpm": ["--channels", 8, "--channel-mult", "1,2", "--timesteps", 50],
    "flow": ["--channels", 8, "--channel-mult", "1,2"],
    "pixelcnn": ["--channels", 8, "--layers", 2, "--head-channels", 8],
    "realnvp": ["--scales", 1, "--hidden", 8, "--blocks", 1],
    "gan": ["--latent-dim", 8, "--channels", 8],
    "ebm": ["--channels", 4, "--hidden", 8, "--sgld-steps", 2, "--buffer-size", 64, "--sample-steps", 3],
}


@pytest.mark.parametrize("family", list(SMALL_NETS))
def test_every_family_smoke_runs_from_the_command_line(family, tmp_path, run_cli):
    """Two steps on a slice of real MNIST: a complete run folder, the quick final evaluation (the DDPM's bound
    skipped, saying why), and samples from the saved run."""
    assert set(SMALL_NETS) == set(FAMILIES)  # a new family gets a smoke run here
    run = tmp_path / family
    code, out, err = run_cli("train", family, *SMALL_NETS[family], "--max-steps", 2, "--batch-size", 32, "--subset", 256, "--eval-n", 16,
                             "--out", run)
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and (run / "samples.png").is_file() and (run / "model.safetensors").is_file()
    if FAMILIES[family].quick_eval is None:
        assert "final evaluation skipped" in summary["eval"]["note"] and "genzoo eval" in summary["eval"]["note"]
    elif FAMILIES[family].kind.value in ("exact", "bound"):
        assert summary["eval"]["final_eval"] == "quick" and 0 < summary["eval"]["n_examples"] <= 16
    code, _, err = run_cli("sample", run, "--n", 4, "--out", tmp_path / "s.png")
    assert code == 0, err
