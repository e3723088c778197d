"""Image folders: the user's own pictures as a data set.

    FOLDER/cat/001.png, FOLDER/cat/002.jpg, FOLDER/dog/...    one subfolder per class (labels 0, 1, ... in name order)
    FOLDER/001.png, FOLDER/002.webp, ...                      or no subfolders: unlabelled (every label 0)

PNG, JPEG and WebP files are decoded with Pillow, converted to grey or RGB (``channels``: 1 or 3, default what the
images are: 3 as soon as one is in colour), scaled so that the shorter side is ``image_size`` and centre-cropped
to a square; they are held as uint8 [N x C x S x S], so every view of ``genzoo.data.views`` applies.

Splits: a fixed hold-out drawn by a seeded permutation (seed 0): 5 % of the images for val, 5 % for test (at least
one each), the rest for training. The folder's identity is the SHA-256 ``digest`` of its file list (relative
paths and sizes); a run records it, so that a resumed or evaluated run refuses a folder that has changed.

Decoding thousands of files is slow, so the decoded tensor is cached in the user's cache
(~/.cache/genzoo/folders/DIGEST-CxS.safetensors; never a pickle), written atomically, keyed by the digest and
the size, and reused while the file list is unchanged.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from genzoo.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_PIXELS = 40_000_000  # a larger image is refused before decoding (a decompression bomb)
HOLDOUT = 0.05  # of the images, for val and again for test
SPLIT_SEED = 0
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True)
class Listing:
    root: Path
    files: tuple[Path, ...]  # relative to root, sorted
    labels: tuple[int, ...]
    classes: tuple[str, ...]  # () for an unlabelled folder
    digest: str


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_folder(root: str | Path) -> Listing:
    """The images of a folder and their labels, or a DataError saying in one sentence what is wrong."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images (no such directory).")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    files: list[Path] = []
    labels: list[int] = []
    if class_dirs:
        if loose:
            raise DataError(f"{root} has class subfolders and also images of its own, such as {loose[0].name}; put "
                            f"every image in a class subfolder, or use a folder without subfolders.")
        for label, d in enumerate(class_dirs):
            found = sorted(p for p in d.rglob("*") if _is_image(p))
            if not found:
                raise DataError(f"the class folder {d} has no images ({', '.join(IMAGE_SUFFIXES)}).")
            files += [p.relative_to(root) for p in found]
            labels += [label] * len(found)
    else:
        files = [p.relative_to(root) for p in loose]
        labels = [0] * len(files)
    if not files:
        others = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        held = f"; it holds {len(others)} other entries such as {others[0]}." if others else "; it is empty."
        raise DataError(f"{root} has no images ({', '.join(IMAGE_SUFFIXES)}){held}")
    if len(files) < 3:
        raise DataError(f"{root} has {len(files)} image(s); a data set needs at least 3 (train, val and test).")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.as_posix()}\t{(root / f).stat().st_size}\n".encode())
    return Listing(root, tuple(files), tuple(labels), tuple(d.name for d in class_dirs), h.hexdigest())


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            if im.width * im.height > MAX_PIXELS:
                raise DataError(f"{path} is {im.width}x{im.height} pixels, more than genzoo decodes "
                                f"({MAX_PIXELS:,}); scale it down first.")
            return im
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning, OSError,
            ValueError) as e:
        raise DataError(f"{path} is not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})."
                        ) from None


def image_channels(listing: Listing) -> int:
    """3 if any image of the folder is in colour, else 1 (read from the headers only)."""
    for f in listing.files:
        with _open(listing.root / f) as im:
            if im.mode not in GREY_MODES:
                return 3
    return 1


def decode(path: Path, channels: int, size: int) -> np.ndarray:
    """One image as uint8 [C x size x size]: converted, shorter side scaled to ``size``, centre-cropped."""
    with _open(path) as im:
        try:
            im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{path} is corrupt or truncated ({str(e).splitlines()[0] if str(e) else 'unreadable'})."
                            ) from None
        if min(im.size) < size:
            raise DataError(f"{path} is {im.width}x{im.height}, smaller than --image-size {size}; use a smaller "
                            f"--image-size or remove the image.")
        if im.mode in ("RGBA", "LA", "P") and channels == 3:
            im = im.convert("RGBA")
            flat = Image.new("RGBA", im.size, (255, 255, 255, 255))  # transparency over white
            im = Image.alpha_composite(flat, im)
        im = im.convert("RGB" if channels == 3 else "L")
        w, h = im.size
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        if new != (w, h):
            im = im.resize(new, Image.Resampling.LANCZOS, reducing_gap=3.0)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        im = im.crop((left, top, left + size, top + size))
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def split_indices(n: int) -> dict[str, torch.Tensor]:
    """The fixed hold-out: {"train", "val", "test"} index tensors of a folder of n images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    k = max(1, round(HOLDOUT * n))
    return {"test": perm[:k].sort().values, "val": perm[k:2 * k].sort().values, "train": perm[2 * k:].sort().values}


def cache_path(listing: Listing, channels: int, size: int, cache_root: Path) -> Path:
    return cache_root / "folders" / f"{listing.digest[:24]}-{channels}x{size}.safetensors"


def read_images(listing: Listing, channels: int, size: int, cache_root: Path,
                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N x C x S x S], labels [N]) of the listing, from the cache when it holds them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file
    from tqdm import tqdm

    path = cache_path(listing, channels, size, cache_root)
    if path.is_file():
        try:
            cached = load_file(path)
            if cached["images"].shape == (len(listing.files), channels, size, size):
                return cached["images"], cached["labels"]
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache is rebuilt
    images = np.empty((len(listing.files), channels, size, size), dtype=np.uint8)
    for i, f in enumerate(tqdm(listing.files, desc="decoding images", unit="img", disable=not progress or None,
                               leave=False)):
        images[i] = decode(listing.root / f, channels, size)
    out = torch.from_numpy(images), torch.tensor(listing.labels, dtype=torch.int64)
    try:  # the cache is an optimisation: a read-only or full cache folder costs only the decoding next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({"images": out[0], "labels": out[1]}, str(tmp), metadata={"digest": listing.digest})
        tmp.replace(path)
    except (OSError, SafetensorError):
        pass
    return out
