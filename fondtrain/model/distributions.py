"""Posterior samplers, KL divergences and the soft clamps of the iterative VAEs (SPEC 3-5).

Every function is pure: tensors in, tensors out, randomness only through an explicit
noise tensor or `torch.Generator`, so that a step can be replayed exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

FLOAT32_EPS = torch.finfo(torch.float32).eps
# Lower bound applied before the Poisson soft clamp (the reference's `clamp_(min=-8)`).
POISSON_FLOOR = -8.0
# Decoder log-sigma is squashed to (-3.45, 3.45): variances from ~1e-3 to ~1e3.
DEC_LOG_SIGMA_BOUND = 3.45


# ----------------------------------------------------------------------------- clamps
def softclamp_upper(x: Tensor, c: float | Tensor) -> Tensor:
    """One-sided soft clamp c - softplus(c - x): identity far below c, never above c."""
    return c - F.softplus(c - x)


def softclamp_sym(x: Tensor, c: float | Tensor) -> Tensor:
    """Symmetric soft clamp c * tanh(x / c): slope 1 at 0, limits -c and c."""
    return c * torch.tanh(x / c)


def poisson_clamp(x: Tensor, c: float | Tensor) -> Tensor:
    """clampU(v, c) = c - softplus(c - max(v, -8)) (SPEC 3.3)."""
    return softclamp_upper(torch.clamp(x, min=POISSON_FLOOR), c)


def clamp_ceiling(eps: float | Tensor, c_final: float, posterior: str) -> float | Tensor:
    """Soft-clamp constant c = c_init + eps (c_final - c_init); c_init 2 (Poisson), 1 (Gaussian).

    eps grows from 0 to 1 early in training (SPEC 6), loosening the clamps.
    """
    c_init = 2.0 if posterior == "poisson" else 1.0
    return c_init + eps * (c_final - c_init)


def effective_dec_log_sigma(raw: Tensor) -> Tensor:
    """Effective decoder log-std 3.45 tanh(raw / 3.45), [M]."""
    return softclamp_sym(raw, DEC_LOG_SIGMA_BOUND)


# ----------------------------------------------------------------------------- Poisson
def poisson_rate(u: Tensor) -> Tensor:
    """Rate r = exp(u) + float32 eps used by the samplers (keeps r > 0 for u = -inf)."""
    return torch.exp(u) + FLOAT32_EPS


def n_exp_for_rate(rate: float, p: float = 1e-3) -> int:
    """Number of exponential draws so that the relaxed sampler truncates with prob. < p.

    It is the (1 - p) quantile of Poisson(rate) (the reference's `compute_n_exp`): with
    that many arrivals the chance that more than n_exp events fall in [0, 1] is < p.
    Called off the hot path (every few hundred optimiser steps), so scipy is fine here.
    """
    from scipy.stats import poisson

    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    return int(poisson.ppf(1.0 - p, rate))


def exponential_noise(n_exp: int, shape: torch.Size, device=None, generator=None) -> Tensor:
    """Standard Exp(1) draws [n_exp, *shape] behind one relaxed Poisson sample."""
    noise = torch.empty((n_exp, *shape), device=device)
    return noise.exponential_(generator=generator)


class _RelaxedPoissonFromArrivals(torch.autograd.Function):
    """z = sum_j sigmoid((1 - S_j / r) / tau), r = exp(u) + eps, with S_j unit-rate arrivals.

    Forward computes the sample and its derivative dz/du in one pass, so backward keeps
    only [B, K] instead of the [n_exp, B, K] intermediates that autograd would store.
    The result and gradient equal those of the plain autograd expression (tested).
    """

    @staticmethod
    def forward(ctx, u: Tensor, arrivals: Tensor, temp: float) -> Tensor:
        exp_u = torch.exp(u)
        rate = exp_u + FLOAT32_EPS
        scaled = arrivals / rate  # arrival times of a rate-r process, [n_exp, B, K]
        sig = torch.sigmoid((1.0 - scaled) / temp)
        z = sig.sum(0)
        if ctx.needs_input_grad[0]:
            # d sigmoid(a)/da = s (1 - s); da/du = (S / r) / tau * exp(u) / r
            dz_du = (sig * (1.0 - sig) * scaled).sum(0) * (exp_u / (rate * temp))
            ctx.save_for_backward(dz_du)
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor):
        (dz_du,) = ctx.saved_tensors
        return grad_z * dz_du, None, None


def relaxed_poisson(u: Tensor, temp: float, noise: Tensor) -> Tensor:
    """Relaxed Poisson sample at temperature tau > 0 (SPEC 4), differentiable in u.

    u: log-rates [B, K]; noise: standard Exp(1) draws [n_exp, B, K]; returns z [B, K].
    tau -> 0 gives the exact Poisson count (truncated at n_exp events).
    """
    arrivals = torch.cumsum(noise, dim=0)
    return _RelaxedPoissonFromArrivals.apply(u, arrivals, float(temp))


def relaxed_poisson_reference(u: Tensor, temp: float, noise: Tensor) -> Tensor:
    """The reference implementation's expression, left to autograd (for tests)."""
    rate = poisson_rate(u)
    times = torch.cumsum(noise / rate, dim=0)
    return torch.sigmoid((1.0 - times) / temp).sum(0)


def exact_poisson(u: Tensor, generator=None) -> Tensor:
    """Exact Poisson count at tau = 0 (evaluation); no gradient. [B, K] -> [B, K]."""
    with torch.no_grad():
        return torch.poisson(poisson_rate(u), generator=generator)


def poisson_kl(u: Tensor, u_prior: Tensor, form: str = "reference") -> Tensor:
    """KL per latent between Poisson posteriors with log-rates u and prior u_prior, [B, K].

    With delta = u - u0 and f = 1 + exp(delta) (delta - 1):
    - "exact": KL(Pois(r) || Pois(r0)) = r0 f(delta);
    - "reference": r f(delta), what the paper's code computes (exp(delta) times exact).
    """
    delta = u - u_prior
    f = 1.0 + torch.exp(delta) * (delta - 1.0)
    if form == "reference":
        return torch.exp(u) * f
    if form == "exact":
        return torch.exp(u_prior) * f
    raise ValueError(f"unknown Poisson KL form {form!r}")


# ----------------------------------------------------------------------------- Gaussian
def gaussian_sample(mu: Tensor, xi: Tensor, temp: float, noise: Tensor) -> Tensor:
    """Reparameterised Gaussian sample z = mu + tau exp(xi) noise, [B, K]."""
    return mu + temp * torch.exp(xi) * noise


def gaussian_kl(mu: Tensor, xi: Tensor, mu_prior: Tensor, xi_prior: Tensor,
                temp: float = 1.0) -> Tensor:
    """KL(N(mu, (tau sigma)^2) || N(mu0, (tau sigma0)^2)) per latent, [B, K] (SPEC 5)."""
    scale = temp * torch.exp(xi)
    scale_prior = temp * torch.exp(xi_prior)
    ratio = scale / scale_prior
    return 0.5 * (((mu - mu_prior) / scale_prior) ** 2 + ratio**2 - 2.0 * torch.log(ratio) - 1.0)


def gaussian_nll(x: Tensor, loc: Tensor, log_sigma: Tensor) -> Tensor:
    """-sum_m log N(x_m; loc_m, exp(log_sigma_m)) per sample: [B, M] -> [B]."""
    z = (x - loc) * torch.exp(-log_sigma)
    return (0.5 * z * z + log_sigma + 0.5 * math.log(2 * math.pi)).sum(-1)
