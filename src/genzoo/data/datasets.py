"""Data sets: where their files are found, how they are fetched and verified, and their splits.

Splits (the same for every data set of the MNIST family):
    train  the first 55,000 images of the training file
    val    the last 5,000 images of the training file
    test   the 10,000 images of the test file

Images are kept as uint8 tensors of shape (N, 1, 28, 28); ``genzoo.data.views`` turns them into the
representation a model trains and is scored on.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genzoo.data.cifar import ARCHIVE_DATASETS, ArchiveSpec, download_archive, read_archive
from genzoo.data.fetch import fetch_verified
from genzoo.data.idx import read_idx
from genzoo.errors import ConfigError, DataError

EMBEDDED_DIR = Path(__file__).parent
N_VAL = 5000
ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    files: dict[str, tuple[str, str]]  # role -> (file name without .gz, SHA-256 of the uncompressed file)
    classes: tuple[str, ...]
    licence: str
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W)
    mirrors: tuple[str, ...] = ()  # base URLs; the file is fetched from mirror + name + ".gz"
    embedded: bool = False  # shipped inside the package

    def expected_sha256(self, role: str) -> str:
        return self.files[role][1]


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST (LeCun, Cortes, Burges)",
        files={
            "train_images": ("train-images-idx3-ubyte",
                             "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
            "train_labels": ("train-labels-idx1-ubyte",
                             "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
            "test_images": ("t10k-images-idx3-ubyte",
                            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
            "test_labels": ("t10k-labels-idx1-ubyte",
                            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        },
        classes=tuple(str(d) for d in range(10)),
        licence="CC BY-SA 3.0",
        embedded=True,
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Xiao, Rasul, Vollgraf; Zalando Research)",
        files={
            "train_images": ("train-images-idx3-ubyte",
                             "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            "train_labels": ("train-labels-idx1-ubyte",
                             "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            "test_images": ("t10k-images-idx3-ubyte",
                            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            "test_labels": ("t10k-labels-idx1-ubyte",
                            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        },
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        licence="MIT",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}.")
    return DATASETS[name]


def search_dirs(name: str) -> list[Path]:
    """Where a non-embedded data set is looked for, in order."""
    dirs = []
    if os.environ.get("GENZOO_DATA"):
        dirs.append(Path(os.environ["GENZOO_DATA"]) / name)
    dirs.append(cache_dir() / name)
    dirs.append(Path("/usr/share/datasets") / name)  # Debian's convention (apt-get install dataset-<name>)
    return dirs


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "genzoo"


def _file_in(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def locate(spec: DatasetSpec) -> tuple[dict[str, Path], str] | None:
    """The four files of a data set and a description of where they were found, or None."""
    dirs = [EMBEDDED_DIR / spec.name] if spec.embedded else search_dirs(spec.name)
    for directory in dirs:
        paths = {role: _file_in(directory, stem) for role, (stem, _) in spec.files.items()}
        if all(paths.values()):
            where = f"embedded in the package ({directory})" if spec.embedded else str(directory)
            return paths, where  # type: ignore[return-value]
    return None


def download(spec: DatasetSpec, dest: Path, mirrors: tuple[str, ...] | None = None,
             timeout: float = 60.0) -> dict[str, Path]:
    """Fetch every file of ``spec`` into ``dest``, verifying SHA-256 before an atomic rename.

    A file whose checksum does not match, or whose transfer was cut off, is never left where a good one is
    expected: it is written to a temporary name in ``dest`` and renamed only once verified.
    """
    mirrors = spec.mirrors if mirrors is None else mirrors
    if not mirrors:
        raise DataError(f"dataset '{spec.name}' has no download mirror.")
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, (stem, sha256) in spec.files.items():
        target = dest / f"{stem}.gz"
        if target.is_file() and _sha256_of_gz(target) == sha256:
            paths[role] = target
            continue
        problems = []
        for mirror in mirrors:
            url = mirror + stem + ".gz"
            try:
                _fetch_verified(url, target, sha256, timeout)
                break
            except DataError as e:
                problems.append(str(e))
        else:
            raise DataError(f"could not download {stem}.gz for '{spec.name}': " + " ".join(problems))
        paths[role] = target
    return paths


def _sha256_of_gz(path: Path) -> str | None:
    try:
        return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
    except (OSError, EOFError, zlib.error):
        return None


def _fetch_verified(url: str, target: Path, sha256: str, timeout: float) -> None:
    def problem(tmp: Path) -> str | None:
        digest = _sha256_of_gz(tmp)
        if digest is None:
            return "the downloaded file is not a complete gzip file"
        if digest != sha256:
            return f"checksum mismatch (got SHA-256 {digest[:16]}…, expected {sha256[:16]}…)"
        return None
    fetch_verified(url, target, problem, timeout, DataError)


@dataclass
class Split:
    images: torch.Tensor  # (N, 1, H, W) uint8, or (N, 2) float for a toy set of points
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.images.shape[0]

    def head(self, n: int) -> "Split":
        return Split(self.images[:n], self.labels[:n])


@dataclass
class ImageDataset:
    name: str
    source: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...] = field(default=())

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown split '{name}'; choose one of: train, val, test.")
        return getattr(self, name)

    def subset(self, n: int) -> "ImageDataset":
        """The first ``n`` examples of each split (for smoke runs; recorded in the run's config)."""
        return ImageDataset(self.name, self.source, self.train.head(n), self.val.head(n), self.test.head(n),
                            self.classes)


def not_found_message(spec: DatasetSpec) -> str:
    looked = ", ".join(str(d) for d in search_dirs(spec.name))
    return (f"dataset '{spec.name}' was not found (looked in {looked}) and could not be downloaded; "
            f"put its four IDX .gz files in one of those folders"
            + (f" (on Debian: apt-get install dataset-{spec.name})" if spec.name == "fashion-mnist" else "")
            + ", or set GENZOO_DATA.")


def load_dataset(name: str, download_missing: bool = True, channels: int = 0, image_size: int = 0,
                 digest: str = "") -> ImageDataset:
    """Load, verify and split a data set (cached per process). Toy sets of 2-D points (``genzoo.data.toy``)
    come in the same container, their "images" being float points [N x 2]. A folder of images
    (``genzoo.data.folder``) is read with the given ``channels`` and ``image_size`` (0: from the images) and, when
    ``digest`` is given, refused if its file list has changed."""
    from genzoo.data.toy import TOY_DATASETS, make_splits
    if is_folder_name(name):
        return _load_folder(name, channels, image_size, digest)
    if name in ARCHIVE_DATASETS:
        return _load_archive(name, download_missing)
    if name in TOY_DATASETS:
        spec = TOY_DATASETS[name]
        splits = {k: Split(*v) for k, v in make_splits(spec).items()}
        return ImageDataset(name, f"generated: {spec.title}", splits["train"], splits["val"], splits["test"],
                            classes=tuple(f"mode {i}" for i in range(spec.modes)))
    return _load(name, download_missing)


def data_shape(name: str, channels: int = 0, image_size: int = 0) -> tuple[int, ...]:
    """The shape of one example of a data set, without loading it: (C, H, W) for images, (2,) for points. A folder
    needs its resolved ``channels`` and ``image_size`` (a run's config records them)."""
    from genzoo.data.toy import TOY_DATASETS
    if name in TOY_DATASETS:
        return (2,)
    if name in ARCHIVE_DATASETS:
        return ARCHIVE_DATASETS[name].image_shape
    if is_folder_name(name):
        if not (channels and image_size):
            raise ConfigError(f"the shape of the images of folder {name} is not known yet (channels and image size).")
        return (channels, image_size, image_size)
    return get_spec(name).image_shape


def is_folder_name(name: str) -> bool:
    """True when ``name`` means a folder of images rather than a data set genzoo knows by name."""
    from genzoo.data.toy import TOY_DATASETS
    if name in DATASETS or name in TOY_DATASETS or name in ARCHIVE_DATASETS:
        return False
    return "/" in name or os.sep in name or Path(name).is_dir()


def folder_settings(name: str, channels: int = 0, image_size: int = 0, listing=None) -> dict:
    """The settings a new run on a folder records: channels and size resolved (from the images' headers when 0),
    and the digest of the file list (``listing``: the folder's ``folder.list_folder``, when already at hand)."""
    from genzoo.data.folder import image_channels, list_folder
    listing = listing or list_folder(name)
    channels = channels or image_channels(listing)
    return {"image_channels": channels, "image_size": image_size or (32 if channels == 3 else 28),
            "data_digest": listing.digest}


def class_count(name: str, listing=None) -> int:
    """How many classes the labels of a data set have: 0 for 2-D points and for a folder without class subfolders
    (``listing``: the folder's ``folder.list_folder``, when already at hand)."""
    from genzoo.data.toy import TOY_DATASETS
    if name in DATASETS:
        return len(DATASETS[name].classes)
    if name in ARCHIVE_DATASETS:
        return len(ARCHIVE_DATASETS[name].classes)
    if name in TOY_DATASETS:
        return 0
    from genzoo.data.folder import list_folder
    return len((listing or list_folder(name)).classes)


def locate_archive(spec: ArchiveSpec) -> Path | None:
    for directory in search_dirs(spec.name):
        if (directory / spec.archive).is_file():
            return directory / spec.archive
    return None


@functools.lru_cache(maxsize=2)
def _load_archive(name: str, download_missing: bool) -> ImageDataset:
    spec = ARCHIVE_DATASETS[name]
    path = locate_archive(spec)
    where = str(path.parent) if path else ""
    if path is None:
        missing = (f"dataset '{name}' was not found (looked for {spec.archive} in "
                   f"{', '.join(str(d) for d in search_dirs(spec.name))})")
        if not download_missing:
            raise DataError(f"{missing}.")
        try:
            path = download_archive(spec, cache_dir() / spec.name)
        except DataError as e:
            raise DataError(f"{missing} and could not be downloaded ({e}); put the file in one of those folders, "
                            f"or set GENZOO_DATA.") from None
        where = f"downloaded to {path.parent}"
    parts = read_archive(path, spec)
    (train_x, train_y), (test_x, test_y) = parts["train"], parts["test"]
    # the last 5,000 training images (a tenth of a smaller archive, as the tests make)
    n_train = len(train_x) - (spec.n_val if len(train_x) >= 10 * spec.n_val else max(1, len(train_x) // 10))
    return ImageDataset(name=name, source=where, train=Split(train_x[:n_train], train_y[:n_train]),
                        val=Split(train_x[n_train:], train_y[n_train:]), test=Split(test_x, test_y),
                        classes=spec.classes)


@functools.lru_cache(maxsize=4)
def _load_folder(name: str, channels: int, image_size: int, digest: str) -> ImageDataset:
    from genzoo.data.folder import list_folder, read_images, split_indices
    listing = list_folder(name)
    if digest and listing.digest != digest:
        raise DataError(f"the folder {name} has changed since the run was made (its file list no longer matches the "
                        f"digest in config.json); restore it, or train a new run on it.")
    settings = folder_settings(name, channels, image_size, listing)
    images, labels = read_images(listing, settings["image_channels"], settings["image_size"], cache_dir(),
                                 progress=sys.stderr.isatty())
    parts = {k: Split(images[idx], labels[idx]) for k, idx in split_indices(len(images)).items()}
    return ImageDataset(name=name, source=f"image folder, {len(images)} images, "
                                          f"{len(listing.classes) or 'no'} classes", train=parts["train"],
                        val=parts["val"], test=parts["test"], classes=listing.classes)


@functools.lru_cache(maxsize=4)
def _load(name: str, download_missing: bool) -> ImageDataset:
    spec = get_spec(name)
    found = locate(spec)
    if found is None:
        if not download_missing:
            raise DataError(not_found_message(spec))
        try:
            paths = download(spec, cache_dir() / spec.name)
        except DataError as e:
            raise DataError(not_found_message(spec) + f" (download: {e})") from None
        where = f"downloaded to {cache_dir() / spec.name}"
    else:
        paths, where = found
    arrays = {}
    for role, path in paths.items():
        is_images = role.endswith("images")
        arrays[role] = read_idx(path, spec.expected_sha256(role), expect_ndim=3 if is_images else 1,
                                expect_dtype=np.uint8)
    for part in ("train", "test"):
        n_img, n_lab = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if n_img != n_lab:
            raise DataError(f"dataset '{name}': {n_img} {part} images but {n_lab} labels.")
    train_x = torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1)  # (N, 1, H, W)
    train_y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    test_x = torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1)
    test_y = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    n_train = len(train_x) - N_VAL
    return ImageDataset(
        name=name, source=where,
        train=Split(train_x[:n_train], train_y[:n_train]),
        val=Split(train_x[n_train:], train_y[n_train:]),
        test=Split(test_x, test_y),
        classes=spec.classes,
    )
