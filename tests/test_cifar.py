"""CIFAR-10 from its binary archive: the record layout, the splits, and a verified download from a local HTTP
server of an archive of the same format that the test makes."""

import dataclasses
import hashlib
import io
import tarfile

import numpy as np
import pytest
import torch

from conftest import LocalServer
from genzoo.data import cifar, datasets
from genzoo.errors import DataError

N_TRAIN, N_TEST = 40, 10  # records per training batch file, and in the test file


def make_archive(seed=0) -> tuple[bytes, dict]:
    """A tar.gz laid out like cifar-10-binary.tar.gz, and the images and labels it holds."""
    rng = np.random.default_rng(seed)
    content, truth = {}, {"train": [], "test": []}
    for part, names in cifar.CIFAR10.members.items():
        for name in names:
            n = N_TRAIN if part == "train" else N_TEST
            labels = rng.integers(0, 10, n, dtype=np.uint8)
            pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            content[name] = np.concatenate([labels[:, None], pixels], axis=1).tobytes()
            truth[part].append((pixels.reshape(n, 3, 32, 32), labels))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in content.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), truth


@pytest.fixture
def served(tmp_path, monkeypatch):
    archive, truth = make_archive()
    state = {"tamper": False}

    def respond(path):
        if not path.endswith("/cifar-10-binary.tar.gz"):
            return None
        return archive[:-1] + bytes([archive[-1] ^ 1]) if state["tamper"] else archive
    server = LocalServer(respond)
    spec = dataclasses.replace(cifar.CIFAR10, sha256=hashlib.sha256(archive).hexdigest(),
                               mirrors=(f"{server.url}/kriz/",))
    monkeypatch.setitem(datasets.ARCHIVE_DATASETS, "cifar10", spec)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GENZOO_DATA", raising=False)
    monkeypatch.setattr(datasets, "search_dirs", lambda name: [tmp_path / "cache" / "genzoo" / name])
    datasets._load_archive.cache_clear()
    yield {"truth": truth, "requests": server.requests, "state": state, "spec": spec,
           "folder": tmp_path / "cache" / "genzoo" / "cifar10"}
    datasets._load_archive.cache_clear()
    server.close()


def test_the_archive_is_downloaded_verified_and_read_record_by_record(served):
    data = datasets.load_dataset("cifar10")
    train_x = torch.from_numpy(np.concatenate([x for x, _ in served["truth"]["train"]]))
    train_y = torch.from_numpy(np.concatenate([y for _, y in served["truth"]["train"]]).astype(np.int64))
    n_val = len(train_x) // 10
    assert data.image_shape == (3, 32, 32) and data.classes[0] == "airplane"
    assert torch.equal(data.train.images, train_x[:-n_val]) and torch.equal(data.val.images, train_x[-n_val:])
    assert torch.equal(data.train.labels, train_y[:-n_val])
    assert torch.equal(data.test.images, torch.from_numpy(served["truth"]["test"][0][0]))
    assert sorted(p.name for p in served["folder"].iterdir()) == ["cifar-10-binary.tar.gz"]  # no leftovers
    n = len(served["requests"])
    datasets._load_archive.cache_clear()
    datasets.load_dataset("cifar10")
    assert len(served["requests"]) == n  # found where it was put: not fetched again


def test_a_wrong_download_is_refused_and_nothing_is_kept(served):
    served["state"]["tamper"] = True
    with pytest.raises(DataError, match="fails its SHA-256 check"):
        datasets.load_dataset("cifar10")
    assert not served["folder"].exists() or not any(served["folder"].iterdir())


def test_a_damaged_archive_on_disk_is_one_sentence(served):
    served["folder"].mkdir(parents=True)
    (served["folder"] / "cifar-10-binary.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(DataError, match="damaged or not the official cifar-10-binary.tar.gz"):
        datasets.load_dataset("cifar10")


def test_the_official_record_layout(tmp_path):
    # one record: label 7, then the red, green and blue planes; pixel (0, 0) of each plane is 10, 20, 30
    record = np.zeros(cifar.RECORD, dtype=np.uint8)
    record[0], record[1], record[1 + 1024], record[1 + 2048] = 7, 10, 20, 30
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for part, names in cifar.CIFAR10.members.items():
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = cifar.RECORD
                tar.addfile(info, io.BytesIO(record.tobytes()))
    path = tmp_path / "a.tar.gz"
    path.write_bytes(buf.getvalue())
    spec = dataclasses.replace(cifar.CIFAR10, sha256=hashlib.sha256(buf.getvalue()).hexdigest())
    images, labels = cifar.read_archive(path, spec)["test"]
    assert labels.tolist() == [7] and images[0, :, 0, 0].tolist() == [10, 20, 30] and images.sum() == 60
