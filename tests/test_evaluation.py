"""Sample quality in genzoo's feature space (the shipped classifiers and their reference statistics), `genzoo eval
--fid`, `genzoo bench` and `genzoo report` (opened in a real headless browser)."""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from genzoo import features, quality
from genzoo.data import load_dataset
from genzoo.data.datasets import DATASETS, locate
from genzoo.evaluate import sample_quality
from genzoo.models.base import DensityKind

from conftest import assert_one_clear_error

TARGETS = {"mnist": 0.993, "fashion-mnist": 0.92}


def available(dataset):
    return dataset == "mnist" or locate(DATASETS[dataset]) is not None


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def test_shift_moves_each_image_by_its_own_offset():
    x = torch.rand(5, 2, 6, 7)
    g = torch.Generator().manual_seed(0)
    shifted = features.shift(x, 2, g)
    dy, dx = torch.randint(0, 5, (2, 5, 1), generator=torch.Generator().manual_seed(0))
    for i in range(5):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        assert torch.equal(shifted[i], padded[:, dy[i, 0]:dy[i, 0] + 6, dx[i, 0]:dx[i, 0] + 7])


@pytest.mark.parametrize("dataset", features.FEATURE_DATASETS)
def test_shipped_feature_nets_meet_their_accuracy_targets(dataset):
    if not available(dataset):
        pytest.skip(f"{dataset} is not on this machine (apt-get install dataset-fashion-mnist)")
    data = load_dataset(dataset)
    accuracy = features.test_accuracy(features.feature_net(dataset), data)
    assert accuracy >= TARGETS[dataset]
    assert f"{accuracy:.4f}" == features.metadata(dataset)["test_accuracy"]  # the weights are the ones measured


@pytest.mark.parametrize("dataset", features.FEATURE_DATASETS)
def test_shipped_reference_is_the_test_split_seen_by_the_shipped_net(dataset):
    """Identical sets give FID 0: the test split's own features against the shipped statistics."""
    if not available(dataset):
        pytest.skip(f"{dataset} is not on this machine (apt-get install dataset-fashion-mnist)")
    data = load_dataset(dataset)
    net = features.feature_net(dataset)
    for view in features.REFERENCES:
        mean, cov, n = features.reference(dataset, view)
        f = features.features(net, features.reference_images(data, view))
        assert n == len(f) == 10_000
        assert quality.frechet_distance(*quality.gaussian_statistics(f), mean, cov) < 1e-6


def test_features_do_not_depend_on_the_batch_size_or_the_mode_of_the_net(mnist):
    net = features.feature_net("mnist")
    x = mnist.test.images[:64].float() / 255
    whole = features.features(net, x, batch_size=64)
    assert torch.allclose(features.features(net, x, batch_size=7), whole, atol=1e-5)
    net.train()  # a user's stray train(): features() scores in eval mode regardless
    try:
        assert torch.allclose(features.features(net, x, batch_size=64), whole, atol=1e-5)
    finally:
        net.eval()
    assert whole.shape == (64, features.FEATURE_DIM)


def test_fid_is_small_for_training_images_and_large_for_noise(mnist):
    net = features.feature_net("mnist")
    mean, cov, _ = features.reference("mnist", "float")
    test_f = features.reference_features("mnist", "float")
    train_f = features.features(net, mnist.train.images[:5000].float() / 255)
    noise_f = features.features(net, torch.rand(5000, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    fid_train = quality.frechet_distance(*quality.gaussian_statistics(train_f), mean, cov)
    fid_noise = quality.frechet_distance(*quality.gaussian_statistics(noise_f), mean, cov)
    assert fid_train < 0.01 * fid_noise
    kid_train, kid_noise = quality.kid(train_f, test_f), quality.kid(noise_f, test_f)
    assert abs(kid_train["kid"]) < 4 * kid_train["kid_stderr"]
    assert kid_noise["kid"] > 100 * kid_noise["kid_stderr"]


class ReplayModel(torch.nn.Module):
    """A stand-in 'model' whose samples are given images, in order: the evaluation's plumbing without training."""

    family, kind = "replay", DensityKind.IMPLICIT

    def __init__(self, images, view="float"):
        super().__init__()
        self.images, self.view, self.cursor = images, view, 0

    def sample(self, n, generator=None):
        out = self.images[self.cursor:self.cursor + n]
        self.cursor += n
        return out

    def scoring_labels(self, n, device):
        return None


class ClassReplayModel(ReplayModel):
    """A class-conditional stand-in: sample(n, y) gives test images of the classes y; without labels, only zeros."""

    def __init__(self, data, scoring_labels):
        super().__init__(None)
        self.data, self.labels = data, scoring_labels

    def sample(self, n, generator=None, y=None):
        y = torch.zeros(n, dtype=torch.long) if y is None else y
        pools = {int(c): self.data.test.images[self.data.test.labels == c] for c in y.unique()}
        picks = [pools[int(c)][(self.cursor + i) % len(pools[int(c)])] for i, c in enumerate(y)]
        self.cursor += n
        return torch.stack(picks).float() / 255

    def scoring_labels(self, n, device):
        return self.labels(n, device)


def test_sample_quality_is_independent_of_the_batch_size_and_states_its_sample_count(mnist):
    images = mnist.train.images[:1000].float() / 255
    a = sample_quality(ReplayModel(images), mnist, n=1000, batch_size=100)
    b = sample_quality(ReplayModel(images), mnist, n=1000, batch_size=1000)
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-9)
    assert a["kid"] == pytest.approx(b["kid"], rel=1e-9)
    assert a["n_samples"] == 1000 and "10000 images" in a["reference"] and "float view" in a["reference"]


def test_a_class_conditional_model_is_scored_on_every_class_in_turn(mnist):
    from genzoo.models.flow import Flow, FlowConfig
    cond = Flow(FlowConfig(channels=8, channel_mult="1,2", class_cond=True, num_classes=3), (1, 28, 28))
    assert cond.scoring_labels(7, torch.device("cpu")).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert Flow(FlowConfig(channels=8, channel_mult="1,2"), (1, 28, 28)).scoring_labels(7, torch.device("cpu")) is None
    from genzoo.models.labels import balanced_labels
    ten = FlowConfig(class_cond=True)  # the ten digits
    balanced = sample_quality(ClassReplayModel(mnist, lambda n, device: balanced_labels(ten, n, device)), mnist, n=1000)
    assert balanced["labels"] == "the 10 classes in turn" and "y" not in balanced["sampler"]
    one = sample_quality(ClassReplayModel(mnist, lambda n, device: None), mnist, n=1000)  # as if unconditional
    assert "labels" not in one
    assert balanced["fid"] < 30 < 200 < one["fid"]  # real digits of every class, against zeros only
    chosen = sample_quality(ClassReplayModel(mnist, lambda n, device: torch.arange(n) % 10), mnist, n=1000,
                            y=torch.full((1000,), 3))
    assert chosen["sampler"] == {"y": 3} and "labels" not in chosen and chosen["fid"] > 200  # --class 3: threes


def test_binary_families_are_compared_with_the_binarised_test_split(mnist):
    from genzoo.data.views import get_view

    bits = get_view("binary").eval_data(mnist.test.images, "test")
    own = sample_quality(ReplayModel(bits, view="binary"), mnist, n=10_000)
    assert "binary view" in own["reference"] and own["fid"] < 1e-6  # Bernoulli draws of 0/1 pixels change nothing
    grey = sample_quality(ReplayModel(bits[:2000], view="binary"), mnist, n=2000, reference="float")
    assert grey["fid"] > 1.0  # binarisation alone is far from the grey images: the reason for two references


def test_no_feature_network_for_toy_data_is_one_clear_error(run_cli, tmp_path):
    code, _, _ = run_cli("train", "gan", "--dataset", "toy-ring", "--max-steps", "2", "--out", tmp_path / "g",
                         "--eval-n", "100")
    assert code == 0
    code, _, err = run_cli("eval", tmp_path / "g", "--fid", "--n", "10")
    assert_one_clear_error(code, err, "no feature network for data set 'toy-ring'")


@pytest.fixture(scope="module")
def tiny_gan_run(tmp_path_factory):
    from genzoo.cli import main

    out = tmp_path_factory.mktemp("runs") / "gan"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "gan", "--max-steps", "3", "--subset", "512", "--batch-size", "64",
                     "--out", str(out)]) == 0
    return out


def test_cli_eval_fid_writes_its_figures_with_the_sample_count(run_cli, tiny_gan_run):
    code, out, err = run_cli("eval", tiny_gan_run, "--fid", "--n", "300", "--batch-size", "128")
    assert code == 0, err
    result = json.loads((tiny_gan_run / "eval-fid.json").read_text())
    assert result["n_samples"] == 300 and result["fid"] > 0 and result["kid_blocks"] == 1
    assert "300 samples" in out and f"FID {result['fid']:10.3f}" in out
    code, _, _ = run_cli("eval", tiny_gan_run, "--fid", "--n", "300", "--batch-size", "64")
    assert json.loads((tiny_gan_run / "eval-fid.json").read_text())["fid"] == pytest.approx(result["fid"], rel=1e-9)


@pytest.mark.parametrize("argv,fragment", [
    (["--fid", "--steps", "5"], "the gan family's sampler takes no --steps option"),
    (["--temperature", "0.5"], "--temperature applies to sample quality only; add --fid"),
    (["--fid", "--batch-size", "0"], "--batch-size must be a positive integer"),
])
def test_cli_eval_fid_refuses_options_that_do_not_apply(run_cli, tiny_gan_run, argv, fragment):
    code, _, err = run_cli("eval", tiny_gan_run, *argv)
    assert_one_clear_error(code, err, fragment)


# --- bench and report -------------------------------------------------------------------------------------------

def bench_cli(*argv):
    from genzoo.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["bench", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


BENCH_ARGS = ("--families", "vae", "gan", "--budget-minutes", "0.01", "--fid-n", "200", "--nll-n", "20")


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code, stdout, err = bench_cli(*BENCH_ARGS, "--out", out)
    assert code == 0, err
    return out


def test_bench_writes_one_table_with_what_each_density_kind_offers(bench_dir):
    table = json.loads((bench_dir / "leaderboard.json").read_text())
    vae, gan = table["rows"]
    assert (vae["family"], vae["kind"], vae["view"], gan["family"], gan["kind"]) == ("vae", "bound", "binary", "gan",
                                                                                     "implicit")
    assert vae["nll"]["bound"] and vae["nll"]["unit"] == "nats" and vae["nll"]["n_examples"] == 20
    assert gan["nll"]["value"] is None
    assert vae["fid_samples"] == gan["fid_samples"] == 200 and vae["fid"] > 0 and gan["fid"] > 0
    assert "binary view" in vae["fid_reference"] and "float view" in gan["fid_reference"]
    md = (bench_dir / "LEADERBOARD.md").read_text()
    assert re.search(r"\| vae \| bound \| binary \| ≤ \d+\.\d{3} nats \(20 images\) \| \d+\.\d\d \|", md)
    assert re.search(r"\| gan \| implicit \| float \| — \| \d+\.\d\d \|", md)
    floor = {f["reference"].split(", ")[1]: f for f in table["floor"]}  # real training images, scored alike
    assert set(floor) == {"binary view", "float view"} and all(f["n_samples"] == 200 for f in floor.values())
    assert floor["float view"]["fid"] < gan["fid"] and floor["binary view"]["fid"] < vae["fid"]
    assert "| *training images* | data | binary |" in md and "| *training images* | data | float |" in md


def test_bench_picks_up_where_it_stopped(bench_dir):
    model = bench_dir / "vae" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    (bench_dir / "gan" / "eval-fid.json").unlink()  # as if interrupted while scoring the GAN
    code, out, err = bench_cli(*BENCH_ARGS, "--out", bench_dir)
    assert code == 0, err
    assert "vae: reusing the finished run" in out and "vae: reusing" in out.split("gan:")[0]
    assert "gan: FID and KID of 200 samples" in out and "vae: FID and KID" not in out
    assert model.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("argv,fragment", [
    (["--families", "vea"], "unknown model family 'vea'"),
    (["--run", "gan"], "--run takes FAMILY=RUN_FOLDER"),
    (["--budget-minutes", "0"], "--budget-minutes must be a positive number"),
])
def test_bench_refuses_bad_options_in_one_sentence(run_cli, tmp_path, argv, fragment):
    code, _, err = run_cli("bench", "--out", tmp_path, *argv)
    assert_one_clear_error(code, err, fragment)


def test_bench_refuses_a_reused_run_of_another_family(run_cli, tmp_path, bench_dir):
    code, _, err = run_cli("bench", "--out", tmp_path, "--families", "gan", "--run", f"gan={bench_dir / 'vae'}")
    assert_one_clear_error(code, err, "holds vae on mnist, not gan on mnist")


def chromium():
    """Debian's chromium, installed if absent (as root with apt-get); None where no browser can be had."""
    path = shutil.which("chromium")
    if path is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
                       shell=True, capture_output=True, timeout=900, check=False)
        path = shutil.which("chromium")
    return path


def rendered_dom(browser, page, profile):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    done = subprocess.run([browser, *flags], capture_output=True, text=True, timeout=120, check=False)
    return done.stdout


def test_report_renders_in_a_real_browser_with_every_image_loaded(run_cli, bench_dir, tiny_gan_run, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium and no way to install it (needs Debian's apt-get as root)")
    page = tmp_path / "report.html"
    code, out, err = run_cli("report", bench_dir / "vae", bench_dir / "gan", tiny_gan_run, "--out", page)
    assert code == 0, err
    source = page.read_text()
    n_images = source.count("<img ")
    assert n_images >= 3 + 2 + 1 + 3 and "src=\"http" not in source  # self-contained: every image embedded
    dom = rendered_dom(browser, page, tmp_path / "profile")
    assert f'data-images-loaded="{n_images}/{n_images}"' in dom, dom[:300]
    board = re.search(r'<div id="leaderboard"><table>.*?</table>', dom, re.S).group(0)
    assert board.count("<tr>") == 1 + 3 and "implicit" in board and "≤ " in board


def test_report_of_a_folder_that_is_not_a_run_is_one_clear_error(run_cli, tmp_path):
    code, _, err = run_cli("report", tmp_path, "--out", tmp_path / "r.html")
    assert_one_clear_error(code, err, "is not a run folder")
    assert not (tmp_path / "r.html").exists()


def interrupted_evaluation(model, data, cfg, partial, after_batches):
    """Run an evaluation with ``partial`` that is stopped (as by Ctrl-C) during batch ``after_batches + 1``."""
    from genzoo.evaluate import evaluate

    real, calls = model.log_likelihood_estimate, []

    def failing(x, k):
        calls.append(1)
        if len(calls) > after_batches:
            raise KeyboardInterrupt
        return real(x, k)

    model.log_likelihood_estimate = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate(model, data, cfg, torch.device("cpu"), progress=False, partial=partial)
    finally:
        del model.log_likelihood_estimate


def evaluation_from(partial, model, data, cfg):
    """An evaluation given ``partial``, and the lines it said."""
    from genzoo.evaluate import evaluate

    said = []
    return evaluate(model, data, cfg, torch.device("cpu"), progress=False, partial=partial, log=said.append), said


def test_an_interrupted_evaluation_continues_where_it_stopped_with_the_same_result(mnist, tmp_path):
    from genzoo import storage
    from genzoo.config import EvalConfig
    from genzoo.evaluate import evaluate
    from genzoo.models.vae import VAE, VAEConfig

    model = VAE(VAEConfig(latent_dim=4, hidden=32, depth=1), (1, 28, 28))  # its ELBO and IWAE draw noise
    cfg, cpu = EvalConfig(n=350, iwae_k=4), torch.device("cpu")
    whole = evaluate(model, mnist, cfg, cpu, progress=False)
    partial = tmp_path / "eval-test.partial.safetensors"
    interrupted_evaluation(model, mnist, cfg, partial, after_batches=2)
    saved, _ = storage.load_tensors(partial)
    assert {k: len(v) for k, v in saved.items()} == {"neg_elbo": 200, "nll": 200}  # whole batches only
    result, said = evaluation_from(partial, model, mnist, cfg)
    assert result == whole
    assert any("200 images already scored" in s for s in said)
    assert not partial.exists()  # removed once the evaluation is complete

    # progress of other settings, or a damaged file, is not used: the evaluation starts again
    interrupted_evaluation(model, mnist, cfg, partial, after_batches=1)
    other = EvalConfig(n=350, iwae_k=8)
    result, said = evaluation_from(partial, model, mnist, other)
    assert result == evaluate(model, mnist, other, cpu, progress=False)
    assert any("other weights or settings" in s for s in said)
    partial.write_bytes(b"not safetensors")
    result, said = evaluation_from(partial, model, mnist, cfg)
    assert result == whole
    assert any("scoring from the first image again" in s.lower() for s in said)
    # the values of the first n examples do not depend on n: a shorter evaluation takes its own from the
    # progress of a longer one
    interrupted_evaluation(model, mnist, cfg, partial, after_batches=2)
    short = EvalConfig(n=100, iwae_k=4)
    result, said = evaluation_from(partial, model, mnist, short)
    assert result == evaluate(model, mnist, short, cpu, progress=False)
    assert any("100 images already scored" in s for s in said)


def test_partial_evaluations_written_before_a_new_setting_stay_valid():
    # the fingerprint of a fixed model at the default settings, as genzoo computed it before --dequant-draws existed
    # (commit 31087ff): a partial file on disk from then must still be recognised, and a changed setting must not be
    import dataclasses

    from genzoo.config import EvalConfig
    from genzoo.evaluate import _fingerprint
    from genzoo.models.vae import VAE, VAEConfig

    model = VAE(VAEConfig(latent_dim=4, hidden=32, depth=1), (1, 28, 28))
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.fill_(0.5)
    cfg = EvalConfig(n=350, iwae_k=4)
    assert _fingerprint(model, cfg, "mnist") == "27ea93e5679434b93a67bf0c94e67062bbada7ad8996a6865ae6c3957c76d452"
    assert _fingerprint(model, dataclasses.replace(cfg, n=10), "mnist") == _fingerprint(model, cfg, "mnist")
    assert _fingerprint(model, dataclasses.replace(cfg, dequant_draws=8), "mnist") != _fingerprint(model, cfg, "mnist")
