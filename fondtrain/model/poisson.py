"""The Poisson posterior of iP-VAE: relaxed and exact samplers and the KL (SPEC 4-5).

Every function is pure: tensors in, tensors out, randomness only through an explicit
noise tensor or `torch.Generator`, so that a step can be replayed exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fondtrain.model.random_streams import WordStream, log_uniform_, numpy_bits

FLOAT32_EPS = torch.finfo(torch.float32).eps


def poisson_rate(u: Tensor) -> Tensor:
    """Rate r = exp(u) + float32 eps used by the samplers (keeps r > 0 for u = -inf)."""
    return torch.exp(u) + FLOAT32_EPS


def exponential_noise(n_exp: int, shape: torch.Size, device=None, generator=None) -> Tensor:
    """Standard Exp(1) draws [n_exp, *shape] behind one relaxed Poisson sample.

    On CPU they are -log U (`log_uniform_`) of a `WordStream`, one [*shape] row per
    arrival: what the streamed sampler (`relaxed_poisson` without noise) draws from the
    same generator state as long as no entry finishes early (see `_sum_arrivals`), and in
    any case the same distribution. On accelerators: -log(1 - U) from torch's device
    generator.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cpu":
        stream, numel = WordStream(generator), math.prod(shape)
        rows = [log_uniform_(stream.take(numel)).view(shape) for _ in range(n_exp)]
        return torch.stack(rows).neg_() if rows else torch.empty((0, *shape))
    noise = torch.empty((n_exp, *shape), device=device)
    return noise.uniform_(generator=generator).neg_().log1p_().neg_()


def vectorized_sampler(t: Tensor) -> bool:
    """Whether the relaxed Poisson sampler works on whole [n_exp, B, K] tensors (GPUs and
    other accelerators: fewer kernel launches) rather than on cache-sized blocks of
    arrivals for the entries not yet finished (CPU: `_sum_arrivals`)."""
    return t.device.type != "cpu"

class _RelaxedPoissonStream(torch.autograd.Function):
    """z = sum_j sigmoid((1 - S_j / r) / tau), r = exp(u) + eps, S_j unit-rate arrivals.

    The arrivals come from the given Exp(1) noise [n_exp, B, K] or, with noise None, from
    n_exp fresh draws of the generator (on CPU only for entries whose later arrivals can
    still add anything: `_sum_arrivals`). Forward accumulates the sample and its
    derivative dz/du together, so no [n_exp, B, K] intermediate is kept: backward keeps
    one [B, K] tensor. The result and gradient equal those of the plain autograd
    expression (tested).

    With a_j = (1 - S_j / r) / tau = 1/tau - S_j k, k = 1 / (r tau):
    dz/du = sum_j s_j (1 - s_j) S_j * k e^u / r, s_j = sigmoid(a_j).
    """

    @staticmethod
    def forward(ctx, u: Tensor, temp: float, n_exp: int, noise: Tensor | None,
                generator) -> Tensor:
        exp_u = torch.exp(u)
        rate = exp_u + FLOAT32_EPS
        k = (rate * temp).reciprocal_()
        inv_temp = torch.tensor(1.0 / temp, dtype=u.dtype, device=u.device)
        need_grad = ctx.needs_input_grad[0]
        if vectorized_sampler(u):
            # Accelerators: a few [n_exp, B, K] kernels instead of ~9 n_exp small launches;
            # still only the [B, K] derivative is kept for backward.
            if noise is None:
                noise = exponential_noise(n_exp, u.shape, u.device, generator)
            arrivals = torch.cumsum(noise.to(u.dtype), dim=0)
            sig = torch.sigmoid(inv_temp - arrivals * k)
            z = sig.sum(0)
            acc = (sig * (1.0 - sig) * arrivals).sum(0) if need_grad else None
        elif noise is None:
            stream = WordStream(generator)

            def draw(j: int, count: int, live: Tensor | None) -> Tensor:  # log U: -Exp(1)
                n = k.numel() if live is None else live.numel()
                return log_uniform_(stream.take(count * n)).view(count, n)
            z, acc = _sum_arrivals(draw, -1.0, n_exp, k, inv_temp, need_grad)
        else:
            def draw(j: int, count: int, live: Tensor | None) -> Tensor:  # Exp(1), a copy
                rows = noise[j:j + count].reshape(count, -1)
                return rows.clone() if live is None else rows.index_select(1, live)
            z, acc = _sum_arrivals(draw, 1.0, n_exp, k, inv_temp, need_grad)
        if need_grad:
            ctx.save_for_backward(acc.view_as(u).mul_(k).mul_(exp_u).div_(rate))
        return z.view_as(u)

    @staticmethod
    def backward(ctx, grad_z: Tensor):
        (dz_du,) = ctx.saved_tensors
        return grad_z * dz_du, None, None, None, None


# Once at least this fraction of the entries still computed have finished (see
# `_sum_arrivals`), the sampler drops them from its working set.
COMPACT_FRACTION = 0.25
# Values per block of arrivals in `_sum_arrivals` (1 MB of float32: about this machine's
# L2 cache per core).
ARRIVAL_BLOCK = 2**18


def sigmoid_zero_below(dtype: torch.dtype) -> float:
    """An a below which sigmoid(a) = 1 / (1 + exp(-a)) is exactly 0 in `dtype`: exp(-a)
    overflows to inf (-89.7 in float32, -710.8 in float64)."""
    return -(math.log(torch.finfo(dtype).max) + 1.0)


def _sum_arrivals(draw, sign: float, n_exp: int, k: Tensor, inv_temp: Tensor,
                  need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """z = sum_j sigmoid(a_j) and acc = sum_j s_j (1 - s_j) S_j on CPU, flat [B K] each.

    draw(j, count, live) gives arrivals j .. j + count - 1 for the working set, a new
    [count, n] tensor of Exp(1) draws (sign 1) or of log U (sign -1): every entry of the
    flat [B K] when live is None, else the n entries `live` (indices into it). Arrivals
    are taken a few at a time (about ARRIVAL_BLOCK values per block) so that each torch
    call does a block's work: at these sizes the number of calls, not the arithmetic, is
    much of the cost.

    An entry is finished once a_j = 1/tau - S_j k falls below `sigmoid_zero_below`: S_j
    only grows, so every later sigmoid(a) and s (1 - s) S of it is exactly 0 and adding
    them changes nothing. So once a quarter of the working set has finished it is dropped
    (most entries of a sparse posterior finish after an arrival or two: the loop then
    runs, and draws, for the others), and the loop ends when none is left. Given the same
    draws per entry the result equals the sum over every arrival of every entry to
    rounding (tested: blocks add the same terms in another order). A freshly drawn stream
    draws for the working set only, which changes which numbers an entry gets but not
    their distribution: each arrival of an entry is still a fresh Exp(1) draw, and those
    it is not given would add exactly 0.
    """
    k_live = k.reshape(-1)
    if n_exp == 0:  # the n_exp of a step whose rates are all below ~1e-3
        return torch.zeros_like(k_live), (torch.zeros_like(k_live) if need_grad else None)
    threshold = sigmoid_zero_below(k.dtype)
    # signed arrival times A = sign * S: log U sums to -S without a negation pass
    arrival = z = acc = None  # of the working set
    z_out = acc_out = None  # of every entry, once the working set has shrunk
    live = None  # indices of the working set in the flat [B K]; None: every entry
    j = 0
    while j < n_exp:
        count = min(n_exp - j, max(1, ARRIVAL_BLOCK // max(1, k_live.numel())))
        times = draw(j, count, live).to(k.dtype)
        if arrival is not None:
            times[0].add_(arrival)
        for i in range(1, count):  # A_j .. A_{j+count-1}; row adds beat cumsum over dim 0
            times[i].add_(times[i - 1])
        a = torch.addcmul(inv_temp, times, k_live, value=-sign)  # 1/tau - S k
        alive = a[-1] >= threshold
        sig = a.sigmoid_()
        z = sig.sum(0) if z is None else z.add_(sig.sum(0))
        if need_grad:
            slope_times = sig.sub_(sig * sig).mul_(times)  # s (1 - s) A
            acc = slope_times.sum(0) if acc is None else acc.add_(slope_times.sum(0))
        arrival = times[-1]
        j += count
        n_alive = int(alive.sum())
        if j == n_exp or n_alive > (1.0 - COMPACT_FRACTION) * alive.numel():
            continue
        if live is None:  # the working set's sums become every entry's
            z_out, acc_out = z, acc
        else:  # write the working set back before shrinking it
            z_out.index_copy_(0, live, z)
            if need_grad:
                acc_out.index_copy_(0, live, acc)
        if n_alive == 0:
            live = None
            break
        keep = torch.from_numpy(np.flatnonzero(alive.numpy()))  # ~5x torch.nonzero here
        live = keep if live is None else live.index_select(0, keep)
        arrival, k_live, z = (t.index_select(0, keep) for t in (arrival, k_live, z))
        if need_grad:
            acc = acc.index_select(0, keep)
    if z_out is None:
        z_out, acc_out = z, acc
    elif live is not None:
        z_out.index_copy_(0, live, z)
        if need_grad:
            acc_out.index_copy_(0, live, acc)
    return z_out, (acc_out.mul_(sign) if need_grad else None)


def relaxed_poisson(u: Tensor, temp: float, noise: Tensor | None = None, n_exp: int | None = None,
                    generator=None) -> Tensor:
    """Relaxed Poisson sample at temperature tau > 0 (SPEC 4), differentiable in u.

    u: log-rates [B, K]. Either noise: standard Exp(1) draws [n_exp, B, K] (exact replay),
    or noise None and n_exp: the sampler draws its n_exp arrivals itself from `generator`,
    one row at a time and on CPU only for the entries not yet finished (the fast path: no
    [n_exp, B, K] tensor). Returns z [B, K]. Both have the same distribution, and give
    the same numbers for the same generator state while no entry finishes early
    (`_sum_arrivals`). tau -> 0 gives the exact Poisson count (truncated at n_exp events).
    """
    if noise is None:
        if n_exp is None:
            raise ValueError("relaxed_poisson needs either noise or n_exp")
    else:
        n_exp = noise.shape[0]
    return _RelaxedPoissonStream.apply(u, float(temp), int(n_exp), noise, generator)


def relaxed_poisson_reference(u: Tensor, temp: float, noise: Tensor) -> Tensor:
    """The reference implementation's expression, left to autograd: the oracle the tests and
    the sampler benchmarks compare `relaxed_poisson` with."""
    rate = poisson_rate(u)
    times = torch.cumsum(noise / rate, dim=0)
    return torch.sigmoid((1.0 - times) / temp).sum(0)


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

