"""The feature networks of genzoo's sample-quality metrics, and the reference statistics shipped with them.

No Inception weights can be fetched offline, and for 28x28 grey images a domain network is the better feature
extractor anyway: a small CNN classifier per data set (``nets.classifier.SmallCNN``) is trained by
``scripts/train_feature_nets.py`` and shipped in ``genzoo/weights/DATASET.safetensors`` together with the mean and
covariance of its features on the whole test split, once for each reference view:

``float``   the test images x/255 (grey), the reference of every family that samples grey images;
``binary``  the fixed binarisation of the test split (``data.views``), the reference of the Bernoulli families,
            whose samples are drawn as Bernoulli pixels before scoring.

Features are always computed with the network in eval mode, in float32, without gradients, and depend on no
other image of the batch (the network has no batch norm), so a figure does not depend on the batch size.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from genzoo import storage
from genzoo.devices import bf16_supported
from genzoo.quality import gaussian_statistics
from genzoo.data.datasets import ImageDataset, cache_dir, is_folder_name
from genzoo.data.views import get_view
from genzoo.errors import ConfigError
from genzoo.nets.classifier import SmallCNN

WEIGHTS_DIR = Path(__file__).parent / "weights"
FEATURE_DATASETS = ("mnist", "fashion-mnist")  # shipped with the package
REFERENCES = ("float", "binary")
DROPOUT = 0.3
FEATURE_DIM = SmallCNN.feature_dim


def user_dir() -> Path:
    """Where `genzoo features train` puts the feature networks it trains for other data."""
    return cache_dir() / "features"


def feature_key(dataset: str) -> str:
    """The name of a data set's feature network: its own name, or for a folder the digest of its file list (so a
    changed folder is not scored against the statistics of the old one)."""
    if is_folder_name(dataset):
        from genzoo.data.folder import list_folder
        return f"folder-{list_folder(dataset).digest[:24]}"
    return dataset


def weights_path(dataset: str) -> Path:
    if dataset in FEATURE_DATASETS:
        return WEIGHTS_DIR / f"{dataset}.safetensors"
    path = user_dir() / f"{feature_key(dataset)}.safetensors"
    if not path.is_file():
        raise ConfigError(f"no feature network for data set '{dataset}' yet, so no FID or KID; train one with "
                          f"`genzoo features train {dataset}` (it needs labelled images), or score on one of: "
                          f"{', '.join(FEATURE_DATASETS)}.")
    return path


@functools.cache
def _load(dataset: str) -> tuple[SmallCNN, dict[str, torch.Tensor], dict[str, str]]:
    """The data set's feature network, its reference statistics and metadata, read once per process (for a folder,
    finding the file walks the folder for its digest)."""
    path = weights_path(dataset)
    tensors, meta = storage.load_tensors(path)
    net = SmallCNN(in_channels=int(meta.get("in_channels", 1)), classes=int(meta.get("classes", 10)),
                   dropout=DROPOUT)
    storage.load_weights(net, {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, path)
    net.eval().requires_grad_(False)
    return net, {k: v for k, v in tensors.items() if k.startswith("ref.")}, meta


def feature_net(dataset: str) -> SmallCNN:
    """The shipped classifier of ``dataset``, in eval mode and frozen."""
    return _load(dataset)[0]


def reference(dataset: str, view: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean [D], covariance [D x D], number of test images) of the shipped reference features, float64."""
    if view not in REFERENCES:
        raise ConfigError(f"unknown reference '{view}'; choose one of: {', '.join(REFERENCES)}.")
    _, ref, meta = _load(dataset)
    if f"ref.{view}.mean" not in ref:
        raise ConfigError(f"the feature network of '{dataset}' has no {view} reference (colour images are compared "
                          f"in the float view only).")
    return ref[f"ref.{view}.mean"], ref[f"ref.{view}.cov"], int(meta["n_reference"])


def metadata(dataset: str) -> dict[str, str]:
    """What the weights file says of itself: test accuracy, training command, epochs, seed."""
    return dict(_load(dataset)[2])


@torch.no_grad()
def features(net: SmallCNN, images: torch.Tensor, batch_size: int = 500,
             shape: tuple[int, int, int] = (1, 28, 28)) -> torch.Tensor:
    """Penultimate features [N x D] (float64) of images [N x C x H x W] in [0, 1], on the images' device; the
    network scores images of ``shape`` only (the shape it was trained on)."""
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(shape):
        raise ConfigError(f"the feature network scores {' x '.join(map(str, shape))} images; got shape "
                          f"{tuple(images.shape)[1:]}.")
    net = net.to(images.device).eval()
    out = [net.features(images[i:i + batch_size].float()).double() for i in range(0, len(images), batch_size)]
    return torch.cat(out)


@functools.cache
def reference_features(dataset: str, view: str) -> torch.Tensor:
    """Features [N x D] of the whole test split in the reference ``view`` (computed once per process)."""
    return features(feature_net(dataset), reference_images(feature_data(dataset), view), shape=image_shape(dataset))


def image_shape(dataset: str) -> tuple[int, int, int]:
    """The image shape the data set's feature network takes (recorded in its weights file)."""
    meta = _load(dataset)[2]
    return tuple(int(v) for v in meta.get("image_shape", "1,28,28").split(","))  # type: ignore[return-value]


def feature_data(dataset: str) -> ImageDataset:
    """The data set as its feature network was trained on it (a folder: at the recorded channels and size)."""
    from genzoo.data import load_dataset

    c, h, _ = image_shape(dataset)
    return load_dataset(dataset, channels=c, image_size=h)  # (the shape applies to folders only)


def reference_images(data: ImageDataset, view: str, split: str = "test", n: int | None = None) -> torch.Tensor:
    """The first n images (default all) of a split (default the test split) as the reference ``view`` sees them,
    [N x 1 x H x W] in [0, 1]. The fixed binarisation of a prefix is the prefix of the split's binarisation."""
    images = data.split(split).images[:n]
    return get_view("binary").eval_data(images, split) if view == "binary" else images.float() / 255.0


# --- training (scripts/train_feature_nets.py) ------------------------------------------------------------------

def shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image [N x C x H x W] by its own random integer offset in [-max_shift, max_shift]^2,
    filling with zeros."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    return padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def train_classifier(data: ImageDataset, epochs: int, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                     max_shift: int = 2, flips: bool = False, log=print) -> tuple[SmallCNN, float]:
    """Train a SmallCNN on the training split with random shifts of up to ``max_shift`` pixels (and horizontal
    flips if ``flips``), Adam with a one-cycle schedule, bf16 autocast on channels-last tensors where bf16 is native
    (the features are later computed in float32); returns the net in eval mode and its test accuracy."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = SmallCNN(in_channels=data.image_shape[0], classes=max(len(data.classes), int(data.train.labels.max()) + 1),
                   dropout=DROPOUT).to(memory_format=torch.channels_last)
    use_bf16 = bf16_supported(torch.device("cpu"))
    x, y = data.train.images, data.train.labels
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        net.train()
        total = 0.0
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            xb = shift(x[idx].float() / 255.0, max_shift, g) if max_shift else x[idx].float() / 255.0
            if flips:
                flip = torch.rand(len(idx), generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = net(xb.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        accuracy = test_accuracy(net, data)
        log(f"epoch {epoch + 1}/{epochs}: train loss {total / len(x):.4f}, test accuracy {accuracy:.4f}")
    return net.to(memory_format=torch.contiguous_format).eval(), accuracy


@torch.no_grad()
def test_accuracy(net: SmallCNN, data: ImageDataset) -> float:
    net.eval()
    pred = torch.cat([net(b.float() / 255.0).argmax(1) for b in data.test.images.split(1000)])
    return (pred == data.test.labels).double().mean().item()


def save_feature_net(net: SmallCNN, data: ImageDataset, path: Path, meta: dict[str, str]) -> None:
    """Write the network and its reference statistics over the whole test split: the float view, and for grey
    images the binary view too."""
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    views = REFERENCES if data.image_shape[0] == 1 else ("float",)
    for view in views:
        f = features(net, reference_images(data, view), shape=data.image_shape)
        mean, cov = gaussian_statistics(f)
        tensors[f"ref.{view}.mean"], tensors[f"ref.{view}.cov"] = mean, cov
    meta = {**meta, "n_reference": str(len(data.test.images)), "in_channels": str(data.image_shape[0]),
            "classes": str(net.head.out_features), "image_shape": ",".join(map(str, data.image_shape))}
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.save_tensors(path, tensors, metadata=meta)
    _load.cache_clear()
    reference_features.cache_clear()
