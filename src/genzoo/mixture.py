"""Gaussian mixtures with full covariances: fitted by EM, sampled from a generator, scored exactly.

A mixture is a dict of tensors — ``weights`` [K], ``means`` [K x D] and ``scale_tril`` [K x D x D] (the Cholesky
factors of the covariances) — so that a model can keep one as buffers and save it with its weights. The VAE fits
one to its training images' posterior means and samples z from it (ex-post density estimation, Ghosh et al. 2020,
"From variational to deterministic autoencoders", section 4): the aggregate posterior the decoder was trained on,
rather than the N(0, I) prior it only approximates.
"""

from __future__ import annotations

import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal


def standard(components: int, dim: int) -> dict[str, torch.Tensor]:
    """K copies of N(0, I) with equal weights: the mixture that is the standard normal, before any fit."""
    return {"weights": torch.full((components,), 1.0 / components), "means": torch.zeros(components, dim),
            "scale_tril": torch.eye(dim).expand(components, dim, dim).clone()}


def distribution(mix: dict[str, torch.Tensor]) -> MixtureSameFamily:
    return MixtureSameFamily(Categorical(probs=mix["weights"]),
                             MultivariateNormal(mix["means"], scale_tril=mix["scale_tril"]))


def log_prob(mix: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """log p(z) under the mixture, z [N x D] -> [N]."""
    return distribution(mix).log_prob(z)


def sample(mix: dict[str, torch.Tensor], n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n draws [N x D]: a component by its weight, then its mean plus its Cholesky factor times N(0, I) noise."""
    device = mix["means"].device
    k = torch.multinomial(mix["weights"].float(), n, replacement=True, generator=generator)
    eps = torch.randn((n, mix["means"].shape[1]), generator=generator, device=device, dtype=mix["means"].dtype)
    return mix["means"][k] + (mix["scale_tril"][k] @ eps[:, :, None])[:, :, 0]


def fit(z: torch.Tensor, components: int, iterations: int = 200, seed: int = 0, jitter: float = 1e-6,
        tol: float = 1e-4) -> dict[str, torch.Tensor]:
    """Maximum-likelihood mixture of ``components`` full-covariance Gaussians for points z [N x D], by EM in
    float64, started from 20 rounds of k-means from ``seed``'s choice of K points (each component with the points'
    covariance), until the mean log-likelihood gains less than ``tol`` nats in an iteration or after
    ``iterations``; ``jitter`` times the mean variance is added to each covariance's diagonal so that none
    collapses. Returns float32 tensors."""
    n, d = z.shape
    if not 1 <= components <= n:
        raise ValueError(f"a mixture of {components} components needs between 1 and {n} points")
    z = z.detach().double().cpu()
    ridge = jitter * z.var(0).mean() * torch.eye(d, dtype=z.dtype)
    g = torch.Generator().manual_seed(seed)
    means = z[torch.randperm(n, generator=g)[:components]].clone()
    for _ in range(20):  # Lloyd's k-means: EM from random points alone creeps through long plateaus
        nearest = torch.cdist(z, means).argmin(1)
        counts = torch.bincount(nearest, minlength=components)
        sums = torch.zeros_like(means).index_add_(0, nearest, z)
        means = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], means)
    covs = (torch.cov(z.T) + ridge).expand(components, d, d).clone()
    weights = torch.full((components,), 1.0 / components, dtype=z.dtype)
    last = -float("inf")
    for _ in range(iterations):
        # E step: responsibilities r [K x N]
        logp = MultivariateNormal(means, covariance_matrix=covs).log_prob(z[:, None, :]).T + weights.log()[:, None]
        r = torch.softmax(logp, dim=0)
        mean_log_lik = torch.logsumexp(logp, dim=0).mean().item()  # of the parameters before this M step
        if mean_log_lik - last < tol:
            break
        last = mean_log_lik
        # M step: weights, means and covariances weighted by r
        nk = r.sum(1).clamp_min(1e-12)
        weights, means = nk / n, (r @ z) / nk[:, None]
        diff = z[None] - means[:, None]
        covs = torch.einsum("kn,knd,kne->kde", r, diff, diff) / nk[:, None, None] + ridge
    return {"weights": weights.float(), "means": means.float(), "scale_tril": torch.linalg.cholesky(covs).float()}
