"""The model contract: the chapter's taxonomy as an API.

Every family declares its density kind and implements only what that kind allows:

    exact         log_prob(x) -> [N], the exact log-likelihood      (PixelCNN, RealNVP)
    bound         elbo(x) -> [N], a lower bound on log p(x)          (VAE, DDPM)
    implicit      nothing but samples                                (GAN)
    unnormalised  energy(x) -> [N], log p(x) = -E(x) - log Z         (EBM)

``loss(x)`` returns the training objective per example ([N]); the trainer reduces it. The evaluator asks a
model only for what its kind offers, so asking a GAN for a likelihood is an error that says why.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from genzoo.errors import ConfigError
from genzoo.options import Option, check_options


class DensityKind(str, enum.Enum):
    EXACT = "exact"
    BOUND = "bound"
    IMPLICIT = "implicit"
    UNNORMALISED = "unnormalised"

    @property
    def description(self) -> str:
        return {
            "exact": "exact log-likelihood log p(x)",
            "bound": "a lower bound on log p(x)",
            "implicit": "no density, samples only",
            "unnormalised": "an energy, log p(x) up to log Z",
        }[self.value]


@dataclass(frozen=True)
class Preset:
    """A named recipe (``genzoo train FAMILY --preset NAME``): settings over the family's defaults, and what it was
    measured to give, so that a published-figure run is one command. Flags given on the command line still win."""
    about: str  # one line: what the recipe is
    expect: str  # the measured figure and its CPU time, as BENCHMARKS.md records them
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


class GenerativeModel(nn.Module):
    family: ClassVar[str]
    kind: ClassVar[DensityKind]
    view: ClassVar[str]  # the data view it trains and is scored on (genzoo.data.views)
    Config: ClassVar[type]  # its model-config dataclass
    train_defaults: ClassVar[dict] = {}  # TrainConfig values this family trains best with (CLI defaults)
    eval_defaults: ClassVar[dict] = {}  # EvalConfig values for `genzoo eval` (e.g. fewer examples when costly)
    final_eval_defaults: ClassVar[dict] = {}  # EvalConfig values for the evaluation that ends `genzoo train`
    # EvalConfig values capping the final evaluation of a short run (None: a short run skips it)
    quick_eval: ClassVar[dict | None] = {"n": 500}
    players: ClassVar[tuple[str, ...]] = ("model",)  # parameter sets, each with its own optimizer
    optimizer_options: ClassVar[dict] = {}  # extra Adam arguments (e.g. the GAN's betas)
    ddp_broadcast_buffers: ClassVar[bool] = True  # DDP copies rank 0's buffers (e.g. batch-norm statistics) to all
    # how an exact family's reported NLL is estimated, when it is not plain ({solver}: an ODE's solver, in words)
    nll_estimator: ClassVar[str] = ""
    views_offered: ClassVar[str] = ""  # for `genzoo list` when the view depends on the configuration
    takes_points: ClassVar[bool] = False  # True for the families that also train on 2-D toy data (view "points")
    points_defaults: ClassVar[dict] = {}  # {"model": {...}, "train": {...}}: the defaults on 2-D toy data
    presets: ClassVar[dict[str, Preset]] = {}  # named recipes, for --preset
    channels_supported: ClassVar[tuple[int, ...]] = (1,)  # the image channel counts the family's networks take
    sizes_supported: ClassVar[str] = "any size"  # the image sizes its networks take, for `genzoo list`
    # What the family can do besides sample(n), declared rather than probed (`genzoo list` shows it):
    sample_options: ClassVar[tuple[Option, ...]] = ()  # the keyword options of sample(), checked in one place
    can_complete: ClassVar[bool] = False  # complete(x, n): fill in the bottom of an image (autoregressive)
    can_invert: ClassVar[bool] = False  # invert(x): images to their latent noise (deterministic samplers)
    # interpolate(x1, x2, frames): decode a path between two images' latent codes (or noises)
    can_interpolate: ClassVar[bool] = False
    class_conditional: ClassVar[bool] = False  # sample(y=...) when trained with labels
    importance_weighted: ClassVar[bool] = False  # log_likelihood_estimate(x, k): an IWAE bound (bound kind)
    ode_likelihood: ClassVar[bool] = False  # ode_log_prob(x, steps, probes): through a probability-flow ODE

    def __init__(self, cfg: Any, image_shape: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        self.image_shape = tuple(image_shape)

    # --- every family -----------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Training objective per example, [N x C x H x W] -> [N], to be minimised.

        ``y`` [N] holds the class labels; only class-conditional families use them.
        """
        raise NotImplementedError

    def forward(self, method: str, *args, **kwargs):
        """Call the loss method ``method`` by name. The trainer calls the loss methods this way, through the
        DistributedDataParallel wrapper when training on several processes: DDP all-reduces the gradients of
        whatever ran in its forward."""
        return getattr(self, method)(*args, **kwargs)

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None, step: int,
                   update: Callable[[str, torch.Tensor], float], call: Callable | None = None) -> float:
        """One optimisation step on a batch; returns the loss to log. ``update(player, losses [N])`` reduces the
        losses, back-propagates and steps that player's optimizer; ``call(method, *args)`` runs a loss method
        (through DDP in distributed training; the model itself otherwise). One-player families keep this
        default."""
        call = call or self
        return update("model", call("loss", x, y))

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        """The parameters the optimizer of ``player`` steps."""
        return list(self.parameters())

    def diagnose(self, row: dict) -> list[str]:
        """Warnings about the training, from an epoch's metrics row (e.g. a GAN's collapse)."""
        return []

    def sample(self, n: int, generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
        """n samples [n x C x H x W] with values in [0, 1]; ``progress`` shows a bar where sampling is slow. A family
        may take more keyword options: exactly those it declares in ``sample_options``."""
        raise NotImplementedError

    @property
    def fits_after_training(self) -> bool:
        """Whether this model estimates something from the training images once its weights are trained
        (``fit_after_training``); the trainer then calls it and saves the weights again. By default not."""
        return False

    def fit_after_training(self, x: torch.Tensor) -> None:
        """Fit that estimate to ``x``: every training image in the family's view, on the model's device."""

    @classmethod
    def for_release(cls, tensors: dict[str, torch.Tensor], model_config: dict) -> tuple[dict, dict]:
        """The weights and model settings to ship (the zoo) from a trained model's: by default all of them. A family
        whose state holds training-only bulk (the EBM's replay buffer) trims it here."""
        return tensors, model_config

    @classmethod
    def capabilities(cls) -> list[str]:
        """What ``genzoo list`` shows: the sampler options and the other abilities of the family."""
        out = [o.cli_flag for o in cls.sample_options]
        return out + [name for name, ok in (("--complete", cls.can_complete), ("--interpolate", cls.can_interpolate),
                                            ("invert() in Python", cls.can_invert)) if ok]

    def from_image(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [C x H x W] (a user's image file) -> this model's view values: binarised at 128 for the
        Bernoulli families, the integers for the 8-bit ones, intensities in [0, 1] otherwise."""
        if self.view == "binary":
            return (image >= 128).float()
        return image.float() if self.view == "uint8" else image.float() / 255.0

    def likelihood_options(self, cfg: Any) -> dict:
        """Keyword options of ``log_prob`` (exact kinds) or ``elbo`` (bounds) taken from an EvalConfig: the flow's ODE
        steps and probes, the DDPM's stratified steps of its bound."""
        return {}

    def bound_estimator(self, cfg: Any) -> str:
        """How ``elbo`` with ``likelihood_options(cfg)`` estimates the bound when it does not sum every term exactly
        (the DDPM's stratified steps); "" when it does."""
        return ""

    def scoring_labels(self, n: int, device: torch.device) -> torch.Tensor | None:
        """The labels that n samples scored by FID/KID are drawn with: None (unconditional) unless the run is
        class-conditional, which is scored on its conditional model, every class in turn."""
        return None

    def check_sample_options(self, **given) -> None:
        """Refuse a sampler option this family does not declare, or a value out of its range (None = not given)."""
        check_options(f"the {self.family} family's sampler", self.sample_options,
                      {k: v for k, v in given.items() if v is not None})

    def completion_grid(self, x: torch.Tensor, n: int, generator: torch.Generator | None = None,
                        **options) -> torch.Tensor:
        """The picture of ``genzoo sample --complete``: the given part of image x first, then n completions."""
        raise ConfigError(f"the {self.family} family cannot complete an image; completion needs an autoregressive "
                          f"model (pixelcnn).")

    def validation_metrics(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Cheap per-example metrics for the per-epoch validation line, each [N]."""
        return {"loss": self.loss(x, y)}

    def pictures(self, x: torch.Tensor, generator: torch.Generator, quick: bool = False) -> dict[str, torch.Tensor]:
        """The family's pictures for the run folder: name -> grid [rows x cols x C x H x W] in [0, 1]; ``quick``
        (after a short run) asks for fewer or cheaper samples where drawing them is slow."""
        return {}

    def check_discrete(self, x: torch.Tensor, levels: int, scorer: str) -> None:
        """Refuse data a discrete likelihood cannot score: another image shape, or values other than the
        integers 0..levels-1. ``scorer`` names the model in the message (e.g. "RealNVP")."""
        if x.shape[1:] != self.image_shape:
            raise ConfigError(f"this {type(self).__name__} models {'x'.join(map(str, self.image_shape))} images; "
                              f"got {'x'.join(map(str, x.shape[1:]))}.")
        if not torch.equal(x, x.round()) or x.min() < 0 or x.max() > levels - 1:
            what = {2: "binary images (0 or 1)", 256: "8-bit images (integers 0..255)"}.get(
                levels, f"images with integer values 0..{levels - 1}")
            raise ConfigError(f"{scorer} scores {what} only.")

    # --- what a kind offers ---------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(self._not_offered("log_prob"))

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(self._not_offered("elbo"))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(self._not_offered("energy"))

    def _not_offered(self, what: str) -> str:
        return f"the {self.family} family is of density kind '{self.kind.value}' ({self.kind.description}); " \
               f"it does not offer {what}."


class ImagesOrPoints(GenerativeModel):
    """A family that trains on float images in [0, 1], modelled in [-1, 1], or on 2-D toy points as they are
    (the GAN and the EBM): the data view, the map to model space and back, and the pictures of points."""

    view = "float"  # images; an instance built for points uses the "points" view
    views_offered = "'float' (images) or 'points' (toy-ring)"
    takes_points = True

    def __init__(self, cfg: Any, image_shape: tuple[int, ...]):
        super().__init__(cfg, image_shape)
        self.points = len(image_shape) == 1
        if self.points:
            self.view = "points"

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.points else 2.0 * x - 1.0

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.points else ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    @staticmethod
    def density_pictures(reference: torch.Tensor, *clouds: torch.Tensor) -> torch.Tensor:
        """One row of density pictures [1 x k x 1 x S x S] of point clouds, all framed by the reference points."""
        from genzoo.plots import density_image, points_extent
        extent = points_extent(reference)
        return torch.stack([density_image(c, extent) for c in clouds])[None]


def interpolation_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Four pairs of validation images for an interpolation picture (images 16 to 23, or fewer repeated)."""
    pick = torch.arange(16, 24, device=x.device) % len(x)
    return x[pick[::2]], x[pick[1::2]]
