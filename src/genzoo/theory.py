"""The chapter's closed forms as pure functions of tensors.

Nothing here holds state or parameters; every function is tested against Monte Carlo or an independent
computation (tests/test_theory.py). Elementwise functions return the input shape; ``sum_except_batch``
reduces to one value per example.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """[N x ...] -> [N]."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def gaussian_kl(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mu1, s1^2) || N(mu2, s2^2)) elementwise, in nats (exercise 14.12).

    log(s2/s1) + (s1^2 + (mu1 - mu2)^2) / (2 s2^2) - 1/2, written with log-variances for stability.
    Sum over dimensions (``sum_except_batch``) for diagonal Gaussians.
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mu1 - mu2) ** 2 * torch.exp(-logvar2) - 1.0)


def gaussian_kl_equal_variance(mu1: torch.Tensor, mu2: torch.Tensor, var: float | torch.Tensor) -> torch.Tensor:
    """KL between two diagonal Gaussians of equal variance: ||mu1 - mu2||^2 / (2 var), per example (14.19)."""
    return sum_except_batch((mu1 - mu2) ** 2 / (2.0 * var))


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, exp(logvar)) elementwise."""
    return -0.5 * (LOG_2PI + logvar + (x - mu) ** 2 * torch.exp(-logvar))


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, 1) elementwise."""
    return -0.5 * (LOG_2PI + x ** 2)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(logits)) elementwise, stable for large |logits|."""
    return -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) elementwise for 8-bit values x in 0..255 under a logistic of ``mean`` and scale exp(log_scale) on
    [-1, 1], discretised into 256 bins of width 2/255 centred on the values (Salimans et al. 2017, eq. 2): the
    mass between the bin's edges, the first bin extending to -inf and the last to +inf, so the 256
    probabilities sum to one exactly."""
    centred = x / 127.5 - 1.0 - mean
    inv_s = torch.exp(-log_scale)
    upper, lower = inv_s * (centred + 1.0 / 255.0), inv_s * (centred - 1.0 / 255.0)
    log_cdf_upper = upper - torch.nn.functional.softplus(upper)  # log sigmoid(upper)
    log_one_minus_cdf_lower = -torch.nn.functional.softplus(lower)  # log (1 - sigmoid(lower))
    # the middle bins: log(sigmoid(upper) - sigmoid(lower)), computed as log sigmoid(upper) + log(1 - e^{l - u})
    # + log(1 - sigmoid(lower)) - ..., in the stable form sigmoid(u) - sigmoid(l) = e^{-softplus(-u)} (1 - e^{l-u})
    # e^{-softplus(l)}
    log_mid = (upper - torch.nn.functional.softplus(upper) - torch.nn.functional.softplus(lower)
               + torch.log(-torch.expm1(lower - upper)))
    return torch.where(x < 0.5, log_cdf_upper, torch.where(x > 254.5, log_one_minus_cdf_lower, log_mid))


def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """log(mean(exp(x))) along ``dim``, without overflow."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def nats_to_bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """Convert a per-example negative log-likelihood in nats to bits per dimension."""
    return nats / (num_dims * math.log(2.0))


def slerp(z1: torch.Tensor, z2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of z1 and z2 (White 2016), falling back to lerp when parallel.

    z1, z2: [N x D]; t: [T]; returns [N x T x D].
    """
    cos = (z1 * z2).sum(-1) / (z1.norm(dim=-1) * z2.norm(dim=-1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))[:, None, None]  # (N, 1, 1)
    t = t[None, :, None]  # (1, T, 1)
    so = torch.sin(omega)
    parallel = so.abs() < 1e-6
    w1 = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * omega) / torch.where(parallel, 1.0, so))
    w2 = torch.where(parallel, t, torch.sin(t * omega) / torch.where(parallel, 1.0, so))
    return w1 * z1[:, None, :] + w2 * z2[:, None, :]


def lerp(z1: torch.Tensor, z2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation: z1, z2: [N x D]; t: [T]; returns [N x T x D]."""
    t = t[None, :, None]
    return (1.0 - t) * z1[:, None, :] + t * z2[:, None, :]


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        bins: int = 256) -> torch.Tensor:
    """log P(x) of 8-bit data rescaled to [-1, 1] under a Gaussian discretised into ``bins`` bins, elementwise.

    The L_0 decoder of Ho et al. (2020, eq. 13): the mass of N(mean, exp(log_scale)^2) over the bin
    [x - 1/(bins-1), x + 1/(bins-1)], with the outermost bins extended to -inf and +inf so the masses sum to 1.
    """
    half_bin = 1.0 / (bins - 1)
    inv_scale = torch.exp(-log_scale)
    upper = (x - mean + half_bin) * inv_scale
    lower = (x - mean - half_bin) * inv_scale
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= upper): used for the lowest bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X >= lower): used for the highest bin
    # log(Phi(upper) - Phi(lower)) without cancellation: the difference of two tails on the far side
    mid = torch.where(lower > 0,
                      log_sf_lower + torch.log1p(-torch.exp((torch.special.log_ndtr(-upper) - log_sf_lower).clamp(max=0))),
                      log_cdf_upper + torch.log1p(-torch.exp((torch.special.log_ndtr(lower) - log_cdf_upper).clamp(max=0))))
    mid = mid.clamp(min=-1e4)  # an empty bin is very unlikely, not impossible
    edge = 1.0 - half_bin
    return torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, mid))


def score_from_noise(eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """The score of q(x_t | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I): -eps / sqrt(1 - alpha_bar) (14.16)."""
    return -eps / torch.sqrt(1.0 - alpha_bar_t)


# --- GANs (Goodfellow et al. 2014; chapter exercises 14.4, 14.13) ------------------------------------------
def optimal_discriminator(p_data: torch.Tensor, p_g: torch.Tensor) -> torch.Tensor:
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)), pointwise; 1/2 where both densities vanish."""
    total = p_data + p_g
    return torch.where(total > 0, p_data / torch.where(total > 0, total, 1.0), torch.full_like(total, 0.5))


def gan_value(d: torch.Tensor, p_data: torch.Tensor, p_g: torch.Tensor, dx: float) -> torch.Tensor:
    """V(D, G) = E_data[log D] + E_g[log(1 - D)] by quadrature on a grid of spacing dx (densities on the grid).

    Terms where a density is zero contribute nothing, whatever D is there (0 * log 0 = 0).
    """
    term_data = torch.where(p_data > 0, p_data * torch.log(d), torch.zeros_like(d))
    term_g = torch.where(p_g > 0, p_g * torch.log1p(-d), torch.zeros_like(d))
    return (term_data + term_g).sum() * dx


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, dx: float) -> torch.Tensor:
    """JSD(p || q) = KL(p || m)/2 + KL(q || m)/2 with m = (p + q)/2, in nats, by quadrature."""
    m = 0.5 * (p + q)
    kl_pm = torch.where(p > 0, p * (torch.log(p) - torch.log(m)), torch.zeros_like(p)).sum() * dx
    kl_qm = torch.where(q > 0, q * (torch.log(q) - torch.log(m)), torch.zeros_like(q)).sum() * dx
    return 0.5 * (kl_pm + kl_qm)


def optimal_gan_value(p_data: torch.Tensor, p_g: torch.Tensor, dx: float) -> torch.Tensor:
    """The closed form V(D*, G) = -2 log 2 + 2 JSD(p_data || p_g) (14.13)."""
    return -2.0 * math.log(2.0) + 2.0 * jensen_shannon(p_data, p_g, dx)


def divergence(f, x: torch.Tensor, probes: int | list[torch.Tensor] = 1,
               generator: torch.Generator | None = None) -> tuple:
    """f(x) and its divergence sum_i df_i/dx_i per example, for x [N x ...]: exactly with ``probes`` = 0 (one
    backward pass per dimension: for small inputs), else Hutchinson's unbiased estimate (1/K) sum_k e_k^T J e_k with
    K = ``probes`` Rademacher vectors (Hutchinson 1990; FFJORD, Grathwohl et al. 2019), drawn here or given as a
    list of K tensors shaped like x."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = f(x)
        flat = out.reshape(len(x), -1)
        div = torch.zeros(len(x), dtype=out.dtype, device=x.device)
        if isinstance(probes, int) and probes == 0:
            for i in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                div = div + g.reshape(len(x), -1)[:, i]
        else:
            vectors = rademacher_probes(x, probes, generator) if isinstance(probes, int) else probes
            for e in vectors:
                (g,) = torch.autograd.grad(out, x, grad_outputs=e, retain_graph=True)
                div = div + sum_except_batch(g * e)
            div = div / len(vectors)
    return out.detach(), div.detach()


def rademacher_probes(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """k vectors of independent +-1 entries shaped like x (Hutchinson's probes)."""
    return [torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1 for _ in range(k)]


# Dormand & Prince (1980), the 5(4) pair with the fifth-order solution propagated (Hairer, Norsett & Wanner,
# "Solving Ordinary Differential Equations I", table 5.2): nodes C, coefficients A, the weights B5 of the solution
# and E = B5 - B4, the difference from the embedded fourth-order one, which estimates the local error. The last
# stage is evaluated at the new point, so it is the next step's first ("first same as last").
DOPRI_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI_A = ((),
           (1 / 5,),
           (3 / 40, 9 / 40),
           (44 / 45, -56 / 15, 32 / 9),
           (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
           (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
           (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
DOPRI_B5 = DOPRI_A[6] + (0.0,)
DOPRI_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def ode_log_likelihood(velocity, x0: torch.Tensor, prior_log_prob, steps: int = 0, probes: int = 1,
                       generator: torch.Generator | None = None, tol: float = 1e-5,
                       evaluations: list | None = None) -> torch.Tensor:
    """log p_0(x0) [N] of the flow dx/dt = velocity(x, t) that carries p_0 at t = 0 to the prior at t = 1, by the
    instantaneous change of variables (Chen et al. 2018, theorem 1):

        log p_0(x(0)) = log p_1(x(1)) + integral_0^1 div velocity(x(t), t) dt,

    integrated on the state (x, integral) by Dormand-Prince 5(4) with adaptive steps (``steps`` = 0: relative and
    absolute tolerance ``tol``, as FFJORD and Song et al. 2021 integrate it), or by ``steps`` uniform steps of the
    classical Runge-Kutta method (RK4: cheap, and biased on image data, whose fields are stiff near t = 0). The
    divergence is exact (``probes`` = 0) or Hutchinson's estimate with K = ``probes`` probes drawn once per path
    (FFJORD's choice: the integrand stays a smooth function of t, and the estimate of the integral is unbiased).
    The network evaluations it took are appended to ``evaluations``."""
    fixed = rademacher_probes(x0, probes, generator) if probes else 0
    count = 0

    def field(x, t):
        nonlocal count
        count += 1
        return divergence(lambda z: velocity(z, torch.full((len(z),), t, dtype=z.dtype, device=z.device)), x, fixed)

    x = x0
    integral = torch.zeros(len(x0), dtype=x0.dtype, device=x0.device)
    if steps:
        h = 1.0 / steps
        for i in range(steps):
            t = i * h
            k1, d1 = field(x, t)
            k2, d2 = field(x + 0.5 * h * k1, t + 0.5 * h)
            k3, d3 = field(x + 0.5 * h * k2, t + 0.5 * h)
            k4, d4 = field(x + h * k3, t + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    else:
        x, integral = _dopri5(field, x, integral, tol)
    if evaluations is not None:
        evaluations.append(count)
    return prior_log_prob(x) + integral


def _dopri5(field, x: torch.Tensor, integral: torch.Tensor, tol: float, max_steps: int = 10_000):
    """(x, integral) at t = 1 from t = 0 by Dormand-Prince 5(4). One step size for the batch: a step is accepted
    when every example's error is within tolerance, measured as the larger of the root mean square of the state's
    scaled errors and the integral's scaled error (the figure reported), each scaled by tol * (1 + |value|);
    the next step is h * clip(0.9 err^(-1/5), 0.2, 10) (Hairer et al. II.4)."""
    def combine(weights, k, j):  # sum_i w_i k_i[j] over the stages: j = 0 the state's slopes, 1 the divergences
        return sum(w * ki[j] for w, ki in zip(weights, k) if w)

    t, h = 0.0, 0.01
    k = [field(x, t)]
    for _ in range(max_steps):
        if t >= 1.0 - 1e-12:
            return x, integral
        h = min(h, 1.0 - t)
        for i in range(1, 6):
            k.append(field(x + h * combine(DOPRI_A[i], k, 0), t + DOPRI_C[i] * h))
        x_new, i_new = x + h * combine(DOPRI_B5, k, 0), integral + h * combine(DOPRI_B5, k, 1)
        k.append(field(x_new, t + h))
        scale_x = tol * (1 + torch.maximum(x.abs(), x_new.abs()))
        scale_i = tol * (1 + torch.maximum(integral.abs(), i_new.abs()))
        per_example = torch.maximum((h * combine(DOPRI_E, k, 0) / scale_x).pow(2).reshape(len(x), -1).mean(1).sqrt(),
                                    (h * combine(DOPRI_E, k, 1) / scale_i).abs())
        err = per_example.max().item()
        if err <= 1.0:
            t, x, integral, k = t + h, x_new, i_new, [k[6]]
        else:
            k = k[:1]
        h = h * min(10.0, max(0.2, 0.9 * max(err, 1e-10) ** -0.2))
    raise RuntimeError(f"the ODE solver took {max_steps} steps without reaching t = 1 (tolerance {tol:g}).")
