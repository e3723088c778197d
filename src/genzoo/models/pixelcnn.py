"""PixelCNN (van den Oord et al. 2016): an exact likelihood by the chain rule of probability (14.1).

    log p(x) = sum_i log p(x_i | x_<i)          pixels in raster order

Every conditional comes out of one pass of the gated PixelCNN (``nets.pixelcnn``), whose output at a pixel
sees only the pixels before it. Two heads:

``bernoulli``  p(x_i | x_<i) = Bernoulli(sigmoid(logit_i)) on binarised images: NLL in nats per image, on the
               same fixed test binarisation as the VAE's.
``softmax``    a 256-way categorical on 8-bit images: NLL in bits per dimension, comparable with RealNVP and
               DDPM. No dequantisation is needed; the model is a distribution over the discrete data itself.

Sampling runs the network once per pixel (H x W passes); completion fixes the given rows and samples the rest.

With ``--class-cond`` the network also takes the class label (van den Oord et al. 2016, section 2.3), dropped with
probability p_uncond in training so that the same network is the unconditional model under "no label"
(Ho & Salimans 2022). Samples of a chosen class may then be guided: the logits of each pixel's conditional
combine the two as uncond + w (cond - uncond). The likelihood genzoo reports is the unconditional model's, log P(x)
under "no label", comparable with every other model; validation also shows -log P(x | y) with the true labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from genzoo import theory
from genzoo.data.views import reports_bits_per_dim
from genzoo.config import option
from genzoo.errors import ConfigError
from genzoo.options import GUIDANCE, LABEL, TEMPERATURE
from genzoo.models.base import DensityKind, GenerativeModel, Preset
from genzoo.models.labels import (LabelConfig, balanced_labels, check_labels, class_rows, classifier_free,
                                  drop_labels, unconditional_then)
from genzoo.nets.pixelcnn import GatedPixelCNN

HEAD_VIEWS = {"bernoulli": "binary", "softmax": "uint8"}


@dataclass
class PixelCNNConfig(LabelConfig):
    head: str = option("bernoulli", "output distribution: bernoulli (binarised images, nats) or softmax "
                                     "(256 levels, bits/dim)", choices=tuple(HEAD_VIEWS))
    channels: int = option(32, "channels of each gated layer", min=1)
    layers: int = option(8, "gated layers (the first is 7x7, mask A)", min=2)
    kernel: int = option(5, "kernel size of the later gated layers (odd)", min=3,
                         check=lambda k: None if k % 2 else "must be odd")
    head_channels: int = option(128, "channels of the 1x1 output head", min=1)


class PixelCNN(GenerativeModel):
    family = "pixelcnn"
    channels_supported = (1, 3)
    kind = DensityKind.EXACT
    view = "binary"  # the default head's; a softmax-head model uses the uint8 view (set per instance)
    Config = PixelCNNConfig
    sample_options = (TEMPERATURE, LABEL, GUIDANCE)
    can_complete = True
    class_conditional = True
    views_offered = "'binary' (--head bernoulli) or 'uint8' (--head softmax)"
    train_defaults = {"lr": 1e-3, "lr_schedule": "cosine", "grad_clip": 1.0}
    presets = {"chapter": Preset(
        "the default gated net for 4 epochs (cosine)",
        "test NLL 84.91 nats on all 10,000 test images, 95 min on one thread (Xeon with AMX, bf16); BENCHMARKS.md",
        train={"epochs": 4}),
        "zoo": Preset(
            "a 64-channel 12-layer gated net for 12 epochs (cosine): the recipe of zoo:pixelcnn-mnist",
            "test NLL 78.92 nats on all 10,000 test images (published 81.30), FID 5.0; 4.1 min on one NVIDIA H200 "
            "(bf16); on a CPU about 14 hours of one thread (70 min an epoch, AMD EPYC with AVX-512-BF16, bf16, "
            "compiled); BENCHMARKS.md",
            model={"channels": 64, "layers": 12}, train={"epochs": 12}),
        "zoo-small": Preset(
            "the default gated net for 6 epochs (cosine): the zoo's recipe before session 19",
            "test NLL 83.48 nats on all 10,000 test images, 5.2 hours on one thread (AMD EPYC, AVX2, fp32, the "
            "other core busy); BENCHMARKS.md",
            train={"epochs": 6}),
        "softmax": Preset(
            "the default gated net with the 256-way head on 8-bit images, 6 epochs (cosine)",
            "test NLL 1.112 bits/dim on all 10,000 test images, 2.0 hours on one thread (AMD EPYC with "
            "AVX-512-BF16, bf16; --compile true is ~1.2x faster); BENCHMARKS.md",
            model={"head": "softmax"}, train={"epochs": 6})}

    def __init__(self, cfg: PixelCNNConfig, image_shape: tuple[int, int, int]):
        super().__init__(cfg, image_shape)
        self.view = HEAD_VIEWS[cfg.head]
        c = image_shape[0]
        if cfg.head == "bernoulli" and c != 1:
            raise ConfigError(f"a Bernoulli-head PixelCNN models binarised grey images, not {c} channels; for colour "
                              f"use --head softmax (256 values per subpixel, R before G before B, in bits/dim).")
        self.levels = 2 if cfg.head == "bernoulli" else 256
        out = c if cfg.head == "bernoulli" else 256 * c
        self.net = GatedPixelCNN(c, out, cfg.channels, cfg.layers, cfg.kernel, cfg.head_channels, colours=c,
                                 num_classes=cfg.num_classes if cfg.class_cond else 0)

    def to_net_input(self, x: torch.Tensor) -> torch.Tensor:
        """View values ({0, 1} or 0..255) -> [-1, 1]."""
        return x * (2.0 / (self.levels - 1)) - 1.0

    def logits(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Per-pixel logits given labels y [N] (None: "no label"): [N x C x H x W] for the Bernoulli head,
        [N x 256 x C x H x W] for the softmax."""
        out = self.net(self.to_net_input(x), y)
        if self.cfg.head == "bernoulli":
            return out
        n, _, h, w = out.shape
        return out.reshape(n, 256, -1, h, w)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The exact log P(x) of each image [N x C x H x W], in nats: [N]; with labels y [N] of a class-conditional
        run, log P(x | y)."""
        self._check_values(x)
        logits = self.logits(x, y)
        if self.cfg.head == "bernoulli":
            return theory.sum_except_batch(theory.bernoulli_log_prob(x, logits))
        return -theory.sum_except_batch(F.cross_entropy(logits, x.long(), reduction="none"))

    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return -self.log_prob(x, drop_labels(self.cfg, y))

    def validation_metrics(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        nll = -self.log_prob(x)
        metrics = {"nll": nll}
        if reports_bits_per_dim(self.view):
            metrics["bits_per_dim"] = theory.nats_to_bits_per_dim(nll, x[0].numel())
        if self.cfg.class_cond and y is not None:  # what knowing the class is worth
            metrics["nll_given_class"] = -self.log_prob(x, y)
        return metrics

    def _check_values(self, x: torch.Tensor) -> None:
        self.check_discrete(x, self.levels, f"a {self.cfg.head}-head PixelCNN")

    # --- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _draw(self, x: torch.Tensor, first_row: int, generator, temperature: float, progress: bool,
              y: torch.Tensor | None = None, guidance: float = 1.0) -> torch.Tensor:
        """Fill rows first_row.. of x (view values) pixel by pixel, in place, and return it; labels y [N] and
        guidance w as in ``sample``."""
        self.check_sample_options(temperature=temperature, guidance=guidance)
        check_labels(self.cfg, y)
        n, c, h, w = x.shape
        if y is not None and y.shape != (n,):
            raise ConfigError(f"{len(y)} labels for {n} images.")
        guide = y is not None and guidance != 1.0
        labels = unconditional_then(y, self.cfg.num_classes) if guide else y

        def net_input(rows):  # guided: the unconditional and the conditional model in one batch
            rows = self.to_net_input(rows)
            return torch.cat([rows, rows]) if guide else rows

        def pixel_logits(out):  # out: [N or 2N x out]
            return classifier_free(*out.chunk(2), guidance) if guide else out

        bar = tqdm(total=(h - first_row) * w, desc="pixels", unit="px", disable=not progress or None, leave=False)
        for i in range(first_row, h):
            context = self.net.context(net_input(x[:, :, :i]), w, labels)  # the rows above, once per row
            for j in range(w):
                for colour in range(c):  # one pass per subpixel: R before G before B
                    out = self.net.row(net_input(x[:, :, i:i + 1]), context, labels)[..., 0, j]
                    logits = pixel_logits(out) / temperature
                    if self.cfg.head == "bernoulli":  # logits (N, 1): grey only
                        u = torch.rand(logits.shape, generator=generator, device=x.device)
                        x[:, :, i, j] = (u < torch.sigmoid(logits)).to(x.dtype)
                    else:  # logits (N, 256 * C), channel-minor as in ``logits``
                        probs = torch.softmax(logits.reshape(n, 256, c)[:, :, colour], dim=-1)
                        x[:, colour, i, j] = torch.multinomial(probs, 1, generator=generator)[:, 0].to(x.dtype)
                bar.update(1)
        bar.close()
        return x

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return x / (self.levels - 1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0,
               y: torch.Tensor | None = None, guidance: float = 1.0, progress: bool = False) -> torch.Tensor:
        """n images [n x C x H x W] in [0, 1], one pixel at a time; ``temperature`` divides the logits. A
        class-conditional run draws the classes y [n] (None: unconditionally), each pixel's logits guided with
        scale w = ``guidance`` (1: the plain conditional model)."""
        w = next(self.parameters())
        x = torch.zeros((n, *self.image_shape), device=w.device, dtype=w.dtype)
        return self.to_image(self._draw(x, 0, generator, temperature, progress, y, guidance))

    @torch.no_grad()
    def complete(self, x: torch.Tensor, n: int, given_rows: int | None = None,
                 generator: torch.Generator | None = None, temperature: float = 1.0,
                 y: torch.Tensor | None = None, guidance: float = 1.0, progress: bool = False) -> torch.Tensor:
        """n completions of one image x [C x H x W] (view values) whose top ``given_rows`` rows (default: half)
        are kept: [n x C x H x W] in [0, 1]."""
        h = self.image_shape[1]
        given_rows = h // 2 if given_rows is None else given_rows
        if not 0 <= given_rows <= h:
            raise ConfigError(f"the rows to keep must be between 0 and {h}; got {given_rows}.")
        self._check_values(x.unsqueeze(0))
        start = x.unsqueeze(0).repeat(n, 1, 1, 1).to(next(self.parameters()).dtype)
        start[:, :, given_rows:] = 0.0
        return self.to_image(self._draw(start, given_rows, generator, temperature, progress, y, guidance))

    @torch.no_grad()
    def completion_grid(self, x: torch.Tensor, n: int, generator: torch.Generator | None = None,
                        temperature: float = 1.0, y: torch.Tensor | None = None, guidance: float = 1.0,
                        progress: bool = False) -> torch.Tensor:
        """[n + 1 x C x H x W] in [0, 1]: the kept top half of image x (view values), then n completions of it
        (of classes y [n] when given)."""
        half = x.clone()
        half[:, self.image_shape[1] // 2:] = 0.0
        completions = self.complete(x, n, generator=generator, temperature=temperature, y=y, guidance=guidance,
                                    progress=progress)
        return torch.cat([self.to_image(half)[None], completions])

    def scoring_labels(self, n: int, device: torch.device) -> torch.Tensor | None:
        return balanced_labels(self.cfg, n, device)

    @torch.no_grad()
    def pictures(self, x: torch.Tensor, generator: torch.Generator, quick: bool = False) -> dict[str, torch.Tensor]:
        side = 4 if quick else 10  # one pass of the network per pixel: a short run draws 16 samples, not 100
        y = class_rows(self.cfg, x.device)  # a class per row of ten (plain conditioning)
        y = y.reshape(10, 10)[:side, :side].reshape(-1) if y is not None else None
        samples = self.sample(side * side, generator, y=y).reshape(side, side, *self.image_shape)
        rows = []
        for image in x[:2 if quick else 5]:  # each row: the image, its top half, and 8 completions of that half
            rows.append(torch.cat([self.to_image(image)[None], self.completion_grid(image, 8, generator)]))
        return {"samples": samples, "completions": torch.stack(rows)}
