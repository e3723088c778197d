"""CIFAR-10 (Krizhevsky 2009) from its official binary version, never the pickled one.

The archive ``cifar-10-binary.tar.gz`` holds cifar-10-batches-bin/data_batch_{1..5}.bin and test_batch.bin:
records of 1 label byte and 3,072 pixel bytes (the red plane, then green, then blue, each 32 x 32, row-major).
The members are read from the archive in memory (nothing is extracted, so no path in it can point elsewhere).

Splits (as for the MNIST family): train the first 45,000 training images, val the last 5,000, test the 10,000
test images. The archive is looked for like Fashion-MNIST's files ($GENZOO_DATA/cifar10, the cache,
/usr/share/datasets/cifar10) and otherwise downloaded, verified by SHA-256 before an atomic rename.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genzoo.data.fetch import fetch_verified, sha256_problem
from genzoo.errors import DataError

RECORD = 1 + 3 * 32 * 32


@dataclass(frozen=True)
class ArchiveSpec:
    name: str
    title: str
    archive: str
    sha256: str
    members: dict[str, tuple[str, ...]]  # part -> member names in order
    classes: tuple[str, ...]
    licence: str
    image_shape: tuple[int, int, int] = (3, 32, 32)
    mirrors: tuple[str, ...] = ()
    n_val: int = 5000


CIFAR10 = ArchiveSpec(
    name="cifar10",
    title="CIFAR-10 (Krizhevsky 2009), binary version",
    archive="cifar-10-binary.tar.gz",
    # 170,052,171 bytes; the page's MD5 is c32a1d4ab5d03f1284b67883e8d87530
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    members={"train": tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
             "test": ("cifar-10-batches-bin/test_batch.bin",)},
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    licence="see https://www.cs.toronto.edu/~kriz/cifar.html",
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
)

ARCHIVE_DATASETS = {CIFAR10.name: CIFAR10}


def download_archive(spec: ArchiveSpec, dest: Path, timeout: float = 120.0) -> Path:
    """Fetch the archive into ``dest`` from the first mirror that serves it intact."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / spec.archive
    problems = []
    for mirror in spec.mirrors:
        try:
            fetch_verified(mirror + spec.archive, target, lambda tmp: sha256_problem(tmp, spec.sha256), timeout)
            return target
        except DataError as e:
            problems.append(str(e))
    raise DataError(f"could not download {spec.archive}: " + " ".join(problems or ["no mirror"]))


def read_archive(path: Path, spec: ArchiveSpec) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{part: (images uint8 [N x 3 x 32 x 32], labels [N])} from a verified archive."""
    wrong = sha256_problem(path, spec.sha256)
    if wrong:
        raise DataError(f"{path}: {wrong}; the file is damaged or not the official {spec.archive} (delete it to "
                        f"download it again).")
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for part, names in spec.members.items():
                chunks = []
                for name in names:
                    member = tar.getmember(name)
                    f = tar.extractfile(member) if member.isfile() else None
                    if f is None:
                        raise DataError(f"{path}: {name} is not a regular file in the archive.")
                    chunks.append(f.read())
                raw = np.frombuffer(b"".join(chunks), dtype=np.uint8)
                if raw.size % RECORD:
                    raise DataError(f"{path}: the {part} records are cut off ({raw.size} bytes, not a multiple of "
                                    f"{RECORD}).")
                records = raw.reshape(-1, RECORD)
                labels = torch.from_numpy(records[:, 0].astype(np.int64))
                if labels.numel() and int(labels.max()) >= len(spec.classes):
                    raise DataError(f"{path}: a {part} label is {int(labels.max())}, beyond the "
                                    f"{len(spec.classes)} classes.")
                images = torch.from_numpy(records[:, 1:].copy()).reshape(-1, *spec.image_shape)
                out[part] = (images, labels)
    except (tarfile.TarError, OSError, EOFError, KeyError) as e:
        raise DataError(f"{path} is not a readable {spec.archive} ({e}).") from None
    return out
