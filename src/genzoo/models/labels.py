"""Class labels for the families that can condition on them (DDPM, flow matching, PixelCNN): the settings a
class-conditional run records, the label dropout that trains classifier-free guidance in the same network
(Ho & Salimans 2022), the guided combination of two outputs, and the labels of the pictures and of scoring.

Labels are 0..num_classes-1; the index num_classes itself means "no label" (the unconditional model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genzoo.config import option
from genzoo.errors import ConfigError


@dataclass
class LabelConfig:
    class_cond: bool = option(False, "condition on the class label (classifier-free guidance)")
    p_uncond: float = option(0.1, "probability of dropping the label in training (with --class-cond)", min=0.0, max=1.0)
    num_classes: int = option(10, "classes of the data set's labels, recorded when the run is made", min=1,
                              flag=False)


def drop_labels(cfg: LabelConfig, y: torch.Tensor | None, generator: torch.Generator | None = None):
    """The training labels: None for an unconditional model; otherwise each label replaced by 'no label' with
    probability p_uncond, so that one network learns both the conditional and the unconditional model."""
    if not cfg.class_cond or y is None:
        return None
    drop = torch.rand(y.shape, device=y.device, generator=generator) < cfg.p_uncond
    return torch.where(drop, torch.full_like(y, cfg.num_classes), y)


def classifier_free(uncond: torch.Tensor, cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """(1 - w) * uncond + w * cond with w = ``guidance`` (Ho & Salimans 2022, eq. 6): w = 1 is the conditional
    output, w = 0 the unconditional one, w > 1 pushes past the conditional output, away from the unconditional."""
    return uncond + guidance * (cond - uncond)


def unconditional_then(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[2N]: "no label" N times, then the labels y [N] -- one batch that evaluates the unconditional and the
    conditional model together for ``classifier_free``."""
    return torch.cat([torch.full_like(y, num_classes), y])


def check_labels(cfg: LabelConfig, y: torch.Tensor | None) -> None:
    if y is not None and not cfg.class_cond:
        raise ConfigError("this run was not trained with --class-cond, so it cannot sample a chosen class.")
    if y is not None and not (0 <= int(y.min()) and int(y.max()) < cfg.num_classes):
        raise ConfigError(f"--class must be between 0 and {cfg.num_classes - 1}.")


def class_rows(cfg: LabelConfig, device: torch.device) -> torch.Tensor | None:
    """The labels of a 10 x 10 picture of a class-conditional run: a class per row (the first ten classes, or the
    classes in turn when there are fewer); None for an unconditional run."""
    if not cfg.class_cond:
        return None
    return torch.arange(10, device=device).repeat_interleave(10) % cfg.num_classes


def balanced_labels(cfg: LabelConfig, n: int, device: torch.device) -> torch.Tensor | None:
    """Labels for scoring n samples of a class-conditional run: every class in turn, as evenly as n allows (the
    classes of the test split are near balanced in every data set genzoo ships); None for an unconditional run."""
    if not cfg.class_cond:
        return None
    return torch.arange(n, device=device) % cfg.num_classes
