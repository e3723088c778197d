"""Image folders: listing, decoding, the fixed hold-out, the cache, every bad input in one sentence, and training
on colour images from the command line."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_clear_error
from genzoo.data import folder as fd
from genzoo.data.datasets import load_dataset
from genzoo.errors import DataError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


def shapes_folder(root, per_class=12, size=40, grey=False):
    """Coloured discs and squares on a dark ground, one subfolder per colour: PNG, JPEG and WebP files."""
    rng = np.random.default_rng(0)
    for c, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            a = np.full((size, size, 3), 20, dtype=np.uint8)
            cx, cy, r = rng.integers(12, size - 12, 2).tolist() + [int(rng.integers(5, 10))]
            yy, xx = np.mgrid[:size, :size]
            inside = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r) if i % 2 else ((abs(xx - cx) < r) & (abs(yy - cy) < r))
            a[inside] = rgb
            im = Image.fromarray(a).convert("L") if grey else Image.fromarray(a)
            suffix = (".png", ".jpg", ".webp")[i % 3] if not grey else ".png"
            im.save(root / name / f"{i:03d}{suffix}")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from genzoo.data import datasets
    datasets._load_folder.cache_clear()
    yield tmp_path / "cache" / "genzoo" / "folders"
    datasets._load_folder.cache_clear()


def test_a_class_folder_loads_with_labels_splits_and_colour(tmp_path, cache):
    root = shapes_folder(tmp_path / "shapes")
    data = load_dataset(str(root))
    assert data.classes == ("blue", "green", "red")  # subfolders in name order
    assert data.image_shape == (3, 32, 32) and data.train.images.dtype == torch.uint8
    n = sum(len(s) for s in (data.train, data.val, data.test))
    assert n == 36 and len(data.val) == len(data.test) == 2  # 5 % each, rounded
    listing = fd.list_folder(root)
    idx = fd.split_indices(36)
    assert sorted(torch.cat(list(idx.values())).tolist()) == list(range(36))  # disjoint and complete
    assert torch.equal(data.test.labels, torch.tensor(listing.labels)[idx["test"]])
    red = data.train.images[data.train.labels == 2].float()
    assert red[:, 0].max() > 200 and red[:, 2].max() < 80  # the red class is red: channels in RGB order
    assert len(list(cache.glob("*.safetensors"))) == 1


def test_the_cache_is_reused_while_the_file_list_is_unchanged(tmp_path, cache, monkeypatch):
    from genzoo.data import datasets
    root = shapes_folder(tmp_path / "shapes")
    first = load_dataset(str(root))
    datasets._load_folder.cache_clear()

    def no_decoding(*args):
        raise AssertionError("decoded although the cache holds the images")
    monkeypatch.setattr(fd, "decode", no_decoding)
    again = load_dataset(str(root))
    assert torch.equal(first.train.images, again.train.images)
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    Image.new("RGB", (40, 40), (255, 255, 0)).save(root / "red" / "extra.png")  # a new file: a new digest
    datasets._load_folder.cache_clear()
    assert sum(len(s) for s in (load_dataset(str(root)).train,)) == 37 - 2 * 2
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_a_folder_that_changed_since_the_run_was_made_is_refused(tmp_path, cache):
    root = shapes_folder(tmp_path / "shapes")
    digest = fd.list_folder(root).digest
    (root / "red" / "000.png").unlink()
    with pytest.raises(DataError, match="has changed since the run was made"):
        load_dataset(str(root), digest=digest)


def test_grey_images_give_one_channel_and_the_grey_size(tmp_path, cache):
    root = shapes_folder(tmp_path / "grey", grey=True)
    data = load_dataset(str(root))
    assert data.image_shape == (1, 28, 28)
    colour = load_dataset(str(root), channels=3, image_size=16)
    assert colour.image_shape == (3, 16, 16)


def test_images_are_scaled_by_the_shorter_side_and_centre_cropped(tmp_path):
    a = np.zeros((40, 80, 3), dtype=np.uint8)  # 80 wide, 40 high: a left band, a centre, a right band
    a[:, :20] = (255, 0, 0)
    a[:, 20:60] = (0, 255, 0)
    a[:, 60:] = (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "wide.png")
    out = fd.decode(tmp_path / "wide.png", 3, 20)  # 80x40 -> 40x20, centre 20x20: only the green part
    assert out.shape == (3, 20, 20) and out[1].min() > 200 and out[0].max() < 60 and out[2].max() < 60


@pytest.mark.parametrize("make, fragment", [
    (lambda r: None, "has no images (.png, .jpg, .jpeg, .webp); it is empty"),
    (lambda r: (r / "notes.txt").write_text("x"), "has no images (.png, .jpg, .jpeg, .webp); it holds 1 other"),
    (lambda r: ((r / "a").mkdir(), (r / "b").mkdir(), Image.new("L", (40, 40)).save(r / "a" / "x.png")),
     "the class folder"),
    (lambda r: ((r / "a").mkdir(), Image.new("L", (40, 40)).save(r / "a" / "x.png"),
                Image.new("L", (40, 40)).save(r / "loose.png")), "also images of its own, such as loose.png"),
])
def test_bad_folders_are_one_sentence(tmp_path, make, fragment):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        fd.list_folder(root)


def test_bad_images_name_the_file(tmp_path, monkeypatch):
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="fake.png is not a readable image"):
        fd.decode(tmp_path / "fake.png", 3, 8)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png is"):
        fd.decode(tmp_path / "cut.png", 3, 8)
    with pytest.raises(DataError, match="whole.png is 64x64, smaller than --image-size 100"):
        fd.decode(tmp_path / "whole.png", 3, 100)
    monkeypatch.setattr(fd, "MAX_PIXELS", 1000)  # a decompression bomb, in miniature
    with pytest.raises(DataError, match="whole.png is 64x64 pixels, more than genzoo decodes"):
        fd.decode(tmp_path / "whole.png", 3, 8)


def test_train_sample_and_eval_on_a_colour_folder_from_the_command_line(tmp_path, cache, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = shapes_folder(tmp_path / "shapes")
    out = tmp_path / "run"
    net = ["--channels", "8", "--channel-mult", "1,2", "--attention", "false"]
    code, _, err = run_cli("train", "flow", "--dataset", root, *net, "--max-steps", "2", "--batch-size", "8",
                           "--out", out, "--final-eval", "skip")
    assert code == 0, err
    from genzoo import runs
    cfg = runs.read_config(out)
    assert (cfg.train.image_channels, cfg.train.image_size) == (3, 32)
    assert cfg.train.data_digest == fd.list_folder(root).digest
    run = runs.load_run(out)
    x = run.model.sample(2, torch.Generator().manual_seed(0), steps=2)
    assert x.shape == (2, 3, 32, 32)
    code, _, err = run_cli("train", "vae", "--dataset", root, "--max-steps", "1", "--out", tmp_path / "vae")
    assert_one_clear_error(code, err, "a Bernoulli VAE models binarised grey images", "--likelihood logistic")
    (root / "red" / "000.png").unlink()
    from genzoo.data import datasets
    datasets._load_folder.cache_clear()
    code, _, err = run_cli("eval", out, "--n", "2", "--ode-steps", "1")
    assert_one_clear_error(code, err, "has changed since the run was made")


def test_class_conditional_training_takes_the_folders_classes(tmp_path, cache, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = shapes_folder(tmp_path / "shapes", per_class=4)
    net = ["--channels", "8", "--channel-mult", "1,2", "--attention", "false", "--image-size", "16"]
    code, _, err = run_cli("train", "ddpm", "--dataset", root, *net, "--class-cond", "true", "--max-steps", "2",
                           "--batch-size", "8", "--out", tmp_path / "run", "--final-eval", "skip")
    assert code == 0, err
    from genzoo import runs
    run = runs.load_run(tmp_path / "run")
    assert run.config.model.num_classes == 3 and run.model.net.class_emb.num_embeddings == 4  # 3 classes + none
    code, _, err = run_cli("sample", tmp_path / "run", "--class", "2", "--n", "2", "--steps", "2")
    assert code == 0, err
    code, _, err = run_cli("sample", tmp_path / "run", "--class", "3", "--n", "2", "--steps", "2")
    assert_one_clear_error(code, err, "--class must be between 0 and 2")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(flat / f"{i}.png")
    code, _, err = run_cli("train", "flow", "--dataset", flat, *net, "--class-cond", "true", "--max-steps", "1",
                           "--out", tmp_path / "flat-run")
    assert_one_clear_error(code, err, "--class-cond needs labelled images", "has no class subfolders")
    assert not (tmp_path / "flat-run").exists()


def test_fid_on_a_folder_needs_its_own_feature_network(tmp_path, cache, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = shapes_folder(tmp_path / "shapes", per_class=40)
    out = tmp_path / "run"
    net = ["--channels", "8", "--channel-mult", "1,2", "--attention", "false"]
    code, _, err = run_cli("train", "flow", "--dataset", root, *net, "--max-steps", "1", "--batch-size", "8",
                           "--out", out, "--final-eval", "skip", "--image-size", "16")  # 16 x 16: a faster test
    assert code == 0, err
    code, _, err = run_cli("eval", out, "--fid", "--n", "20", "--steps", "2")
    assert_one_clear_error(code, err, "no feature network for data set", "genzoo features train")
    small = ["--image-size", "16", "--max-shift", "0"]
    from genzoo import features
    trained = features.train_classifier
    monkeypatch.setattr(features, "train_classifier", lambda *a, **k: (trained(*a, **k)[0], 0.5))
    code, _, err = run_cli("features", "train", root, "--epochs", "1", *small)
    assert_one_clear_error(code, err, "50.0% test accuracy", "not twice chance (66.7%)", "nothing was written")
    monkeypatch.setattr(features, "train_classifier", trained)
    code, printed, err = run_cli("features", "train", root, "--epochs", "40", *small)  # 40 steps of 108 images
    assert code == 0, err
    meta = features.metadata(str(root))
    assert meta["image_shape"] == "3,16,16" and meta["classes"] == "3" and meta["n_reference"] == "6"
    code, printed, err = run_cli("eval", out, "--fid", "--n", "20", "--steps", "2")
    assert code == 0, err
    assert "note: the reference is only 6 test images: FID is strongly biased" in printed
    assert "note: KID from a single block of 6" in printed
    result = json.loads((out / "eval-fid.json").read_text())
    assert result["n_samples"] == 20 and result["fid"] > 0
    # the real images score far better than the untrained model's samples in the same space
    from genzoo.evaluate import score_images
    real = score_images(features.feature_data(str(root)).train.images[:20].float() / 255, str(root), "float", 20)
    assert real["fid"] < result["fid"]
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(unlabelled / f"{i}.png")
    code, _, err = run_cli("features", "train", unlabelled)
    assert_one_clear_error(code, err, "has no class subfolders", "FID/KID are not available")


@pytest.mark.parametrize("family", ["ddpm", "flow", "realnvp", "gan", "ebm", "vae", "pixelcnn"])
def test_every_colour_family_trains_and_samples_on_rgb_32(family, tmp_path, cache, run_cli):
    from test_cli import SMALL_NETS

    from genzoo import runs
    from genzoo.models import FAMILIES
    assert {f for f, c in FAMILIES.items() if 3 in c.channels_supported} == set(FAMILIES)
    root = shapes_folder(tmp_path / "shapes", per_class=4)
    extra = {"vae": ["--likelihood", "logistic"], "pixelcnn": ["--head", "softmax", "--image-size", "8"]}.get(family, [])
    code, _, err = run_cli("train", family, "--dataset", root, *SMALL_NETS[family], *extra, "--max-steps", 2,
                           "--batch-size", 8, "--out", tmp_path / "run", "--eval-n", 2, "--eval-ode-steps", 1)
    assert code == 0, err
    x = runs.load_run(tmp_path / "run").model.sample(2, torch.Generator().manual_seed(0))
    side = 8 if family == "pixelcnn" else 32
    assert x.shape == (2, 3, side, side) and torch.isfinite(x).all()
