"""The three views of the same images. Likelihoods are comparable only within one view.

``float``   intensities x/255 in [0, 1]; for models that report no likelihood (GAN) or only an energy.
``binary``  Bernoulli pixels for models scored in nats (VAE, PixelCNN with a Bernoulli head).
            Training uses dynamic binarisation: a fresh draw b ~ Bernoulli(x/255) for every batch.
            Evaluation uses one fixed draw per split, made with numpy's PCG64 bit generator and the seeds in
            ``FIXED_BINARIZATION_SEEDS``, so every model's nats are computed on the very same bits.
``points``  2-D toy data (GAN and EBM): the coordinates as they are.
``uint8``   the integers 0..255 (as floats) for models scored in bits per dimension (RealNVP, PixelCNN
            with a 256-way softmax, DDPM). Models that need continuous data dequantise in training with
            ``dequantize``: (x + u) / 256, u ~ U[0, 1)^D, which makes their continuous log-density a lower
            bound on the log-probability of the 8-bit data (Theis et al. 2016).
"""

from __future__ import annotations

import numpy as np
import torch

from genzoo.errors import ConfigError

FIXED_BINARIZATION_SEEDS = {"train": 2, "val": 1, "test": 0}


def binarize_fixed(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One reproducible Bernoulli(x/255) draw of uint8 images, independent of torch's RNG and version.

    Uses the raw 64-bit output of numpy's PCG64 (a stream numpy keeps stable): the top 53 bits give
    u ~ U[0, 1), and the pixel is 1 when u < x/255.
    """
    raw = np.random.PCG64(seed).random_raw(images.numel())
    u = (raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    p = images.cpu().numpy().reshape(-1).astype(np.float64) / 255.0
    return torch.from_numpy((u < p).astype(np.float32)).reshape(images.shape)


def dequantize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of integer-valued x in 0..255 to (x + u) / 256 in [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + u) / 256.0


class View:
    bits_per_dim = False  # likelihoods on this view are also reported in bits per dimension (8-bit data)

    name: str = ""

    def train_batch(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A training batch from uint8 images (N, C, H, W) already on the target device."""
        raise NotImplementedError

    def eval_data(self, images: torch.Tensor, split: str) -> torch.Tensor:
        """The fixed evaluation tensor of a whole split (the same every time it is asked for)."""
        raise NotImplementedError


class FloatView(View):
    name = "float"

    def train_batch(self, images, generator):
        return images.float() / 255.0

    def eval_data(self, images, split):
        return images.float() / 255.0


class BinaryView(View):
    name = "binary"

    def train_batch(self, images, generator):
        return torch.bernoulli(images.float() / 255.0, generator=generator)

    def eval_data(self, images, split):
        return binarize_fixed(images, FIXED_BINARIZATION_SEEDS[split])


class Uint8View(View):
    name = "uint8"
    bits_per_dim = True

    def train_batch(self, images, generator):
        return images.float()

    def eval_data(self, images, split):
        return images.float()


class PointsView(View):
    name = "points"  # 2-D toy data (genzoo.data.toy): the float coordinates as they are

    def train_batch(self, images, generator):
        return images.float()

    def eval_data(self, images, split):
        return images.float()


VIEWS: dict[str, View] = {v.name: v for v in (FloatView(), BinaryView(), Uint8View(), PointsView())}


def get_view(name: str) -> View:
    if name not in VIEWS:
        raise ConfigError(f"unknown data view '{name}'; choose one of: {', '.join(VIEWS)}.")
    return VIEWS[name]


def reports_bits_per_dim(view: str) -> bool:
    """Whether likelihoods on ``view`` are reported in bits per dimension (the 8-bit view) or in nats only."""
    return get_view(view).bits_per_dim


def batch_indices(n: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0):
    """Shuffled index batches of one epoch (the last, incomplete batch is dropped).

    The order depends only on (seed, epoch), so a run resumed in the middle of an epoch sees the same batches
    an uninterrupted run would.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    n_batches = n // batch_size
    for b in range(start_batch, n_batches):
        yield order[b * batch_size:(b + 1) * batch_size]
