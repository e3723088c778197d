"""Two-dimensional toy data with a known density, for the families whose density is implicit or unnormalised.

``toy-ring``: eight Gaussians of standard deviation 0.02 on a circle of radius 2, equally weighted — the
standard test of mode collapse (Metz et al. 2017, Srivastava et al. 2017). Its exact density is known, so a model
can be scored against it:

* ``mode_metrics(samples)``: a sample is of high quality when it lies within 3 standard deviations of a mode's
  centre (Srivastava et al. 2017); a mode counts as covered when it receives at least a fifth of its fair share of
  the samples (n / 8 / 5), which tolerates imbalance but not a missing mode;
* ``grid_kl(log_density)``: KL(p_data || p_model) with the model's unnormalised log-density normalised
  numerically on a grid (for energy-based models, whose log Z is unknown).

The points are generated from fixed seeds, so every run sees the same 55,000 / 5,000 / 10,000 examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


SPLIT_SIZES = {"train": 55_000, "val": 5_000, "test": 10_000}
SPLIT_SEEDS = {"train": 12, "val": 11, "test": 10}


@dataclass(frozen=True)
class ToySpec:
    name: str
    title: str
    modes: int
    radius: float
    std: float
    extent: float  # the square [-extent, extent]^2 that holds all the mass (for grids and plots)

    def means(self) -> torch.Tensor:
        """Mode centres [modes x 2], float64."""
        angle = 2 * math.pi * torch.arange(self.modes, dtype=torch.float64) / self.modes
        return self.radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n points [n x 2] (float32) and their mode labels [n]."""
        labels = torch.randint(0, self.modes, (n,), generator=generator)
        noise = torch.randn((n, 2), generator=generator, dtype=torch.float64)
        return (self.means()[labels] + self.std * noise).float(), labels

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log p(x) of points [M x 2]: [M], float64."""
        d2 = ((x.double()[:, None, :] - self.means()[None]) ** 2).sum(-1)  # (M, modes)
        log_comp = -0.5 * d2 / self.std ** 2 - math.log(2 * math.pi * self.std ** 2)
        return torch.logsumexp(log_comp, dim=1) - math.log(self.modes)


TOY_DATASETS: dict[str, ToySpec] = {
    "toy-ring": ToySpec("toy-ring", "8 Gaussians (std 0.02) on a ring of radius 2", modes=8, radius=2.0, std=0.02,
                        extent=2.5),
}


def make_splits(spec: ToySpec) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {split: spec.sample(n, torch.Generator().manual_seed(SPLIT_SEEDS[split])) for split, n in SPLIT_SIZES.items()}


def mode_metrics(spec: ToySpec, samples: torch.Tensor) -> dict:
    """Modes covered (out of spec.modes) and the share of high-quality samples, for samples [n x 2]."""
    d = torch.cdist(samples.double().cpu(), spec.means())  # (n, modes)
    dist, nearest = d.min(dim=1)
    good = dist <= 3 * spec.std
    counts = torch.bincount(nearest[good], minlength=spec.modes)
    needed = len(samples) / spec.modes / 5
    return {"modes_covered": int((counts >= needed).sum()), "modes": spec.modes,
            "high_quality_share": good.double().mean().item(), "n_samples": len(samples)}


def grid(spec: ToySpec, points_per_side: int) -> tuple[torch.Tensor, float]:
    """A square grid over [-extent, extent]^2: points [P^2 x 2] (float64) and the area of one cell."""
    axis = torch.linspace(-spec.extent, spec.extent, points_per_side, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1), (axis[1] - axis[0]).item() ** 2


def grid_kl(spec: ToySpec, log_density: Callable[[torch.Tensor], torch.Tensor], points_per_side: int = 1001,
            batch: int = 65536) -> dict:
    """KL(p_data || p_model) in nats, with p_model = exp(log_density) normalised on the grid (its log Z too).

    ``log_density`` maps points [M x 2] to an unnormalised log-density [M] (for an EBM, -E(x)). The grid spacing
    must resolve the modes: 1001 points over [-2.5, 2.5] is a spacing of 0.005 = std / 4.
    """
    pts, cell = grid(spec, points_per_side)
    log_q = torch.cat([log_density(pts[i:i + batch]).double().cpu() for i in range(0, len(pts), batch)])
    log_z = torch.logsumexp(log_q, 0).item() + math.log(cell)
    log_q = log_q - log_z
    log_p = spec.log_density(pts)
    p = log_p.exp()
    p_mass = (p * cell).sum().item()  # ~1: how much of p_data the grid holds
    kl = ((p * (log_p - log_q)) * cell).sum().item() / p_mass
    return {"kl_data_to_model_nats": kl, "log_z_grid": log_z, "grid_points": len(pts), "data_mass_on_grid": p_mass}
