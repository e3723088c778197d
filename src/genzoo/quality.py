"""Sample-quality statistics on feature vectors, as pure functions in float64.

FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to two feature sets,
    d^2 = |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1^{1/2} C_2 C_1^{1/2})^{1/2}).
The trace of the matrix square root is computed from the eigenvalues of the symmetric PSD matrix
C_1^{1/2} C_2 C_1^{1/2} (tr sqrt(C_1 C_2) equals the sum of their square roots), which avoids the complex
round-off of a general ``sqrtm`` of the non-symmetric product C_1 C_2.

KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over disjoint blocks, so the blocks are independent and the spread of
their estimates gives an honest standard error.
"""

from __future__ import annotations

import math

import torch


def gaussian_statistics(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and unbiased covariance [D x D] of features f [N x D], in float64."""
    f = f.double()
    mean = f.mean(0)
    centred = f - mean
    return mean, centred.T @ centred / (len(f) - 1)


def _psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2)."""
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    s1 = _psd_sqrt(cov1)
    middle = s1 @ cov2 @ s1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    d2 = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return max(d2.item(), 0.0)


def fid(f1: torch.Tensor, f2: torch.Tensor) -> float:
    return frechet_distance(*gaussian_statistics(f1), *gaussian_statistics(f2))


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased U-statistic estimate of MMD^2 between the laws of x [m x D] and y [n x D]."""
    x, y = x.double(), y.double()
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
            - 2 * kxy.mean()).item()


def kid(f1: torch.Tensor, f2: torch.Tensor, block: int = 1000, generator: torch.Generator | None = None) -> dict:
    """KID between feature sets f1 and f2: the mean of the unbiased MMD^2 over min(len) // block disjoint
    blocks of randomly ordered rows (all rows in one block if fewer than 2 * block), and its standard error."""
    n = min(len(f1), len(f2))
    if n < 2:
        raise ValueError("KID needs at least two feature vectors per set")
    blocks = max(n // block, 1)
    size = n // blocks
    i1 = torch.randperm(len(f1), generator=generator)[:blocks * size].reshape(blocks, size)
    i2 = torch.randperm(len(f2), generator=generator)[:blocks * size].reshape(blocks, size)
    values = torch.tensor([mmd2_unbiased(f1[a], f2[b]) for a, b in zip(i1, i2)], dtype=torch.float64)
    se = (values.std(unbiased=True) / math.sqrt(blocks)).item() if blocks > 1 else float("nan")
    return {"kid": values.mean().item(), "kid_stderr": se, "kid_blocks": blocks, "kid_block_size": size}
