"""Data sets, splits, views, and the download path (against a local HTTP server on 127.0.0.1)."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LocalServer
from genzoo.data import datasets as ds
from genzoo.data.idx import encode_idx, read_idx
from genzoo.data.views import batch_indices, binarize_fixed, dequantize, get_view
from genzoo.errors import ConfigError, DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FROZEN_TEST_BITS = "6034b88ddb7791a7"  # SHA-256 prefix of the binarised MNIST test set (seed 0)


@pytest.fixture(scope="module")
def mnist():
    return ds.load_dataset("mnist")


def test_mnist_splits_and_label_counts(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (55000, 5000, 10000)
    assert mnist.image_shape == (1, 28, 28) and mnist.train.images.dtype == torch.uint8
    all_train = torch.cat([mnist.train.labels, mnist.val.labels])
    assert torch.bincount(all_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test.labels).tolist() == MNIST_TEST_COUNTS
    assert "embedded" in mnist.source


def test_unknown_dataset_and_split(mnist):
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        ds.load_dataset("cifar")
    with pytest.raises(ConfigError, match="unknown split"):
        mnist.split("dev")


def test_fixed_binarisation_is_reproducible_and_unbiased(mnist):
    images = mnist.test.images
    a, b = binarize_fixed(images, 0), binarize_fixed(images, 0)
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
    # the documented test binarisation (numpy PCG64, seed 0) is frozen: every model's nats use these bits
    assert hashlib.sha256(a.numpy().astype(np.uint8).tobytes()).hexdigest()[:16] == FROZEN_TEST_BITS
    p = images.float().mean() / 255
    assert abs(a.mean() - p) < 3e-3
    assert not torch.equal(a, binarize_fixed(images, 1))
    assert torch.equal(get_view("binary").eval_data(images, "test"), a)


def test_dynamic_binarisation_draws_fresh_bits(mnist):
    x = mnist.train.images[:256]
    view = get_view("binary")
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([view.train_batch(x, g) for _ in range(200)])
    assert not torch.equal(draws[0], draws[1])
    p = x.float() / 255
    assert torch.all(draws[:, p == 0] == 0) and torch.all(draws[:, p == 1] == 1)
    assert (draws.mean(0) - p).abs().mean() < 0.01  # per-pixel frequencies of 200 draws track x/255
    assert abs(draws.mean() - p.mean()) < 2e-3


def test_float_and_uint8_views(mnist):
    x = mnist.test.images[:8]
    f = get_view("float").eval_data(x, "test")
    assert f.min() >= 0 and f.max() <= 1 and torch.allclose(f * 255, x.float())
    u = get_view("uint8").eval_data(x, "test")
    assert torch.equal(u, x.float())
    d = dequantize(u, torch.Generator().manual_seed(0))
    assert d.min() >= 0 and d.max() < 1
    assert torch.equal(torch.floor(d * 256), u)  # dequantisation never leaves the pixel's own bin
    with pytest.raises(ConfigError, match="unknown data view"):
        get_view("rgb")


def test_batch_order_depends_only_on_seed_and_epoch():
    full = list(batch_indices(1000, 64, seed=5, epoch=2))
    assert len(full) == 1000 // 64
    seen = torch.cat(full)
    assert len(seen.unique()) == len(seen)  # no index twice in an epoch
    tail = list(batch_indices(1000, 64, seed=5, epoch=2, start_batch=7))
    assert all(torch.equal(a, b) for a, b in zip(full[7:], tail))
    other = list(batch_indices(1000, 64, seed=5, epoch=3))
    assert not torch.equal(full[0], other[0])


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian(monkeypatch, tmp_path):
    monkeypatch.delenv("GENZOO_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds._load.cache_clear()
    data = ds.load_dataset("fashion-mnist", download_missing=False)
    assert data.source == "/usr/share/datasets/fashion-mnist"
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    ds._load.cache_clear()


# --- download ------------------------------------------------------------------------------------------
def _tiny_files():
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (5010, 2, 2), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 5010, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (7, 2, 2), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 7, dtype=np.uint8),
    }
    stems = dict(train_images="train-images-idx3-ubyte", train_labels="train-labels-idx1-ubyte",
                 test_images="t10k-images-idx3-ubyte", test_labels="t10k-labels-idx1-ubyte")
    raw = {stems[r]: encode_idx(a) for r, a in arrays.items()}
    files = {r: (stems[r], hashlib.sha256(raw[stems[r]]).hexdigest()) for r in arrays}
    return raw, files


@pytest.fixture
def server():
    """Serves /<mode>/<name>.gz: mode 'good', 'wrong' (other bytes), 'cut' (announces more than it sends)."""
    raw, files = _tiny_files()

    def respond(path):
        parts = path.strip("/").split("/")
        if len(parts) != 2 or not parts[1].endswith(".gz") or parts[1][:-3] not in raw:
            return None
        mode, name = parts[0], parts[1][:-3]
        body = gzip.compress(raw[name] if mode != "wrong" else raw[name][:-1] + b"\x07")
        return (body, len(body) // 2) if mode == "cut" else body
    s = LocalServer(respond)
    s.spec = ds.DatasetSpec(name="tiny", title="tiny", files=files, classes=tuple("0123456789"), licence="test",
                            image_shape=(1, 2, 2), mirrors=(s.url + "/good/",))
    yield s
    s.close()


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_download_verifies_and_writes_atomically(server, tmp_path):
    paths = ds.download(server.spec, tmp_path / "tiny")
    for role, path in paths.items():
        assert path.parent == tmp_path / "tiny" and path.name.endswith(".gz")
        read_idx(path, server.spec.expected_sha256(role))
    assert _leftovers(tmp_path / "tiny") == []
    n = len(server.requests)
    ds.download(server.spec, tmp_path / "tiny")  # verified files already there: nothing fetched again
    assert len(server.requests) == n


@pytest.mark.parametrize("mode, message", [("wrong", "checksum mismatch"), ("cut", "cut off")])
def test_bad_download_is_refused_and_leaves_nothing(server, tmp_path, mode, message):
    dest = tmp_path / "tiny"
    with pytest.raises(DataError, match=message):
        ds.download(server.spec, dest, mirrors=(f"{server.url}/{mode}/",))
    assert list(dest.iterdir()) == []  # neither the bad file nor a temporary one


def test_download_falls_back_to_the_next_mirror(server, tmp_path):
    paths = ds.download(server.spec, tmp_path, mirrors=(f"{server.url}/wrong/", f"{server.url}/good/"))
    assert len(paths) == 4 and _leftovers(tmp_path) == []


def test_located_before_downloaded_in_the_documented_order(server, tmp_path, monkeypatch):
    raw, files = _tiny_files()
    env_dir, cache = tmp_path / "env", tmp_path / "cache"
    monkeypatch.setenv("GENZOO_DATA", str(env_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert ds.search_dirs("tiny")[:2] == [env_dir / "tiny", cache / "genzoo" / "tiny"]
    assert ds.locate(server.spec) is None
    ds.download(server.spec, cache / "genzoo" / "tiny")
    assert ds.locate(server.spec)[1] == str(cache / "genzoo" / "tiny")
    (env_dir / "tiny").mkdir(parents=True)
    for stem, data in raw.items():  # uncompressed files are accepted too
        (env_dir / "tiny" / stem).write_bytes(data)
    assert ds.locate(server.spec)[1] == str(env_dir / "tiny")


def test_load_downloads_when_missing_and_explains_when_offline(server, tmp_path, monkeypatch):
    monkeypatch.setenv("GENZOO_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(ds.DATASETS, "tiny", server.spec)
    ds._load.cache_clear()
    data = ds.load_dataset("tiny")
    assert (len(data.train), len(data.val), len(data.test)) == (10, 5000, 7)
    assert data.source.startswith("downloaded to")
    ds._load.cache_clear()
    offline = ds.DatasetSpec(**{**server.spec.__dict__, "name": "tiny2", "mirrors": ("http://127.0.0.1:9/",)})
    monkeypatch.setitem(ds.DATASETS, "tiny2", offline)
    with pytest.raises(DataError) as e:
        ds.load_dataset("tiny2")
    msg = str(e.value)
    assert "was not found" in msg and str(tmp_path / "env" / "tiny2") in msg and "GENZOO_DATA" in msg
    assert not (tmp_path / "cache" / "genzoo" / "tiny2" / "train-images-idx3-ubyte.gz").exists()
    ds._load.cache_clear()
