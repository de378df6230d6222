"""The Poisson posterior of iP-VAE: its rate, the exact sampler and the KL (SPEC 4-5); the
relaxed sampler of training is `fondtrain.model.relaxed_poisson`.

Every function is pure: tensors in, tensors out, randomness only through a
`torch.Generator`, so that a step can be replayed exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fondtrain.model.random_streams import numpy_bits

FLOAT32_EPS = torch.finfo(torch.float32).eps


def poisson_rate(u: Tensor) -> Tensor:
    """Rate r = exp(u) + float32 eps used by the samplers (keeps r > 0 for u = -inf)."""
    return torch.exp(u) + FLOAT32_EPS


def exact_poisson(u: Tensor, generator=None) -> Tensor:
    """Exact Poisson count at tau = 0 (evaluation); no gradient. [B, K] -> [B, K].

    torch.poisson, except on CPU when every rate is at most QUIET_RATE (a sparse
    posterior, e.g. early in training): then `_sparse_poisson` draws for ~p of the
    entries instead of all of them.
    """
    with torch.no_grad():
        rate = poisson_rate(u)
        if rate.device.type == "cpu" and rate.numel() and float(rate.max()) <= QUIET_RATE:
            return _sparse_poisson(rate, generator)
        return torch.poisson(rate, generator=generator)


# Largest rate for `_sparse_poisson`: its cost grows with it, torch.poisson's hardly.
QUIET_RATE = 0.1


def _sparse_poisson(rate: Tensor, generator=None) -> Tensor:
    """Exact Poisson(rate) counts for small rates (CPU): count >= 1 has probability
    q = 1 - e^{-r} <= p = 1 - e^{-max r}, so candidates are picked with probability p by
    geometric skips (a Bernoulli(p) sequence: ~p n draws instead of n), a candidate is kept
    with probability q / p (thinning: together exactly Bernoulli(q)), and a kept one gets
    its count from Poisson(r) conditioned on >= 1, by inversion. In float64 from a numpy
    stream seeded by `generator`: as exact as torch.poisson."""
    flat = rate.reshape(-1)
    counts = torch.zeros_like(flat)
    rng = np.random.Generator(numpy_bits(generator))
    p = -math.expm1(-float(flat.max()))
    candidates = _bernoulli_positions(flat.numel(), p, rng)
    r = flat.numpy()[candidates].astype(np.float64)
    kept = rng.random(candidates.size) * p < -np.expm1(-r)  # probability q / p
    if kept.any():
        values = _zero_truncated_poisson(r[kept], rng)
        counts[torch.from_numpy(candidates[kept])] = torch.from_numpy(values).to(counts.dtype)
    return counts.view_as(rate)


def _bernoulli_positions(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """The indices in [0, n) of the successes of n independent Bernoulli(p) trials, drawn
    as geometric gaps (about p n draws)."""
    found, start = [np.empty(0, dtype=np.int64)], 0
    while start < n and p > 0:
        batch = int(p * (n - start) + 6.0 * math.sqrt(p * (n - start)) + 16)
        positions = start - 1 + np.cumsum(rng.geometric(p, size=batch))
        found.append(positions[positions < n])
        start = int(positions[-1]) + 1
    return np.concatenate(found)


def _zero_truncated_poisson(r: np.ndarray, rng: np.random.Generator, max_count: int = 60) -> np.ndarray:
    """Poisson(r) conditioned on >= 1, by inversion: the smallest k >= 1 whose conditional
    cdf reaches a uniform draw. r float64 [n], at most QUIET_RATE (P(count > 60) < 1e-100)."""
    target = rng.random(r.size) * -np.expm1(-r)  # U (1 - e^{-r}): the cdf unnormalised
    term = r * np.exp(-r)  # P(X = 1)
    cdf = term.copy()
    count = np.ones_like(r)
    for k in range(2, max_count + 1):
        more = target > cdf
        if not more.any():
            break
        count += more
        term = term * r / k
        cdf = cdf + term
    return count


def poisson_kl(u: Tensor, u_prior: Tensor, reference: bool | Tensor = True) -> Tensor:
    """KL per latent between Poisson posteriors with log-rates u and prior u_prior.

    With delta = u - u0 and f = 1 + exp(delta) (delta - 1):
    - reference (True): r f(delta), what the paper's code computes (exp(delta) times exact);
    - exact (False): KL(Pois(r) || Pois(r0)) = r0 f(delta).
    `reference` may be one flag per member ([P] bool, u [P, B, K]): each member its own form.
    """
    if isinstance(reference, str):  # a form's name would read as True: refuse it
        raise ValueError(f"poisson_kl takes reference=True or False (or one flag per member), "
                         f"not the form name {reference!r}")
    delta = u - u_prior
    f = 1.0 + torch.exp(delta) * (delta - 1.0)
    if isinstance(reference, Tensor):
        return torch.where(reference.view((-1,) + (1,) * (u.dim() - 1)), torch.exp(u), torch.exp(u_prior)) * f
    return (torch.exp(u) if reference else torch.exp(u_prior)) * f
