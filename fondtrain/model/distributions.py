"""Posterior samplers, KL divergences and the soft clamps of the iterative VAEs (SPEC 3-5).

Every function is pure: tensors in, tensors out, randomness only through an explicit
noise tensor or `torch.Generator`, so that a step can be replayed exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
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


# ----------------------------------------------------------------------------- fused updates
class _PoissonStateStep(torch.autograd.Function):
    """new = clampU(value + clampU(-exp(log_lr) grad, c_du), c_u) in one node (SPEC 3.3).

    The same numbers as the composition of `poisson_clamp` calls; backward recomputes the
    two softplus slopes from the two pre-clamp tensors it saves ([B, K] each) instead of
    autograd's chain of a dozen saved intermediates.
    """

    @staticmethod
    def forward(ctx, value: Tensor, grad: Tensor, log_lr: Tensor, c_du, c_u) -> Tensor:
        lr = torch.exp(log_lr)
        step_raw = grad * (-lr)
        new_raw = value + poisson_clamp(step_raw, c_du)
        ctx.save_for_backward(step_raw, new_raw, lr)
        ctx.c = (c_du, c_u)
        return poisson_clamp(new_raw, c_u)

    @staticmethod
    def backward(ctx, grad_new: Tensor):
        step_raw, new_raw, lr = ctx.saved_tensors
        c_du, c_u = ctx.c
        # d clampU(v, c)/dv = sigmoid(c - max(v, -8)) where v >= -8, else 0 (torch.clamp's
        # gradient passes at the bound itself).
        grad_value = grad_new * _upper_slope(new_raw, c_u)
        grad_step = grad_value * _upper_slope(step_raw, c_du)
        grad_grad = grad_step * (-lr) if ctx.needs_input_grad[1] else None
        grad_log_lr = None
        if ctx.needs_input_grad[2]:
            grad_log_lr = (grad_step * step_raw).sum().reshape(lr.shape)
        return grad_value, grad_grad, grad_log_lr, None, None


def _upper_slope(v: Tensor, c) -> Tensor:
    """Derivative of clampU(v, c) = c - softplus(c - max(v, -8)) with respect to v."""
    slope = torch.sigmoid(c - torch.clamp(v, min=POISSON_FLOOR))
    return slope.masked_fill_(v < POISSON_FLOOR, 0.0)


class _SymStateStep(torch.autograd.Function):
    """new = clampS(value + clampS(-exp(log_lr) grad, c_du), c_u) in one node (SPEC 3.4),
    clampS(v, c) = c tanh(v / c); backward reuses the two tanh outputs it saves."""

    @staticmethod
    def forward(ctx, value: Tensor, grad: Tensor, log_lr: Tensor, c_du, c_u) -> Tensor:
        lr = torch.exp(log_lr)
        step_raw = grad * (-lr)
        tanh_step = torch.tanh(step_raw / c_du)
        tanh_new = torch.tanh((value + c_du * tanh_step) / c_u)
        ctx.save_for_backward(step_raw, tanh_step, tanh_new, lr)
        return c_u * tanh_new

    @staticmethod
    def backward(ctx, grad_new: Tensor):
        step_raw, tanh_step, tanh_new, lr = ctx.saved_tensors
        grad_value = grad_new * (1.0 - tanh_new * tanh_new)
        grad_step = grad_value * (1.0 - tanh_step * tanh_step)
        grad_grad = grad_step * (-lr) if ctx.needs_input_grad[1] else None
        grad_log_lr = None
        if ctx.needs_input_grad[2]:
            grad_log_lr = (grad_step * step_raw).sum().reshape(lr.shape)
        return grad_value, grad_grad, grad_log_lr, None, None


def state_step(value: Tensor, grad: Tensor, log_lr: Tensor, c_du: float | Tensor,
               c_u: float | Tensor, posterior: str) -> Tensor:
    """One clamped gradient step of a state component, fused: [B, K] -> [B, K].

    new = clamp(value + clamp(-exp(log_lr) grad, c_du), c_u) with the Poisson one-sided
    clamp or the Gaussian symmetric one. log_lr is a 0-dim (or [1]) tensor; c_du, c_u are
    floats or 0-dim tensors without gradient. Equals `state_step_reference` (tested).
    """
    if posterior == "poisson":
        return _PoissonStateStep.apply(value, grad, log_lr, c_du, c_u)
    return _SymStateStep.apply(value, grad, log_lr, c_du, c_u)


def state_step_reference(value: Tensor, grad: Tensor, log_lr: Tensor, c_du: float | Tensor,
                         c_u: float | Tensor, posterior: str) -> Tensor:
    """`state_step` written as the plain composition, left to autograd."""
    clamp = poisson_clamp if posterior == "poisson" else softclamp_sym
    step = clamp(-torch.exp(log_lr) * grad, c_du)
    return clamp(value + step, c_u)


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
    """Standard Exp(1) draws [n_exp, *shape] behind one relaxed Poisson sample.

    On CPU they are -log U from `arrival_log_uniforms`, the very stream the streamed
    sampler (`relaxed_poisson` without noise) consumes, so that a step fed this noise
    replays a step that drew its own from the same generator state, bit for bit. On
    accelerators: -log(1 - U) from torch's device generator.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cpu":
        return torch.cat(list(arrival_log_uniforms(n_exp, shape, generator))).neg_()
    noise = torch.empty((n_exp, *shape), device=device)
    return noise.uniform_(generator=generator).neg_().log1p_().neg_()


def vectorized_sampler(t: Tensor) -> bool:
    """Whether the relaxed Poisson sampler works on whole [n_exp, B, K] tensors (GPUs and
    other accelerators: fewer kernel launches) rather than a few arrivals at a time in
    [B, K] buffers (CPU: cache-resident, nothing of size n_exp materialised)."""
    return t.device.type != "cpu"


# Arrivals drawn per call of the CPU bit generator: bounds the sampler's scratch memory to
# ARRIVAL_CHUNK [B, K] tensors while keeping per-call overheads small.
ARRIVAL_CHUNK = 8
_MANTISSA = 0x007FFFFF  # the 23 fraction bits of a float32
_ONE = 0x3F800000  # the bit pattern of 1.0f
_JUST_BELOW_ONE = 1.0 - 2.0**-24  # f - this is exact (Sterbenz) for f in [1, 2)


def arrival_words(n_exp: int, shape: torch.Size, generator=None) -> Iterator[Tensor]:
    """Random 32-bit words for n_exp arrivals of the CPU sampler: int32 [c, *shape] chunks
    of up to ARRIVAL_CHUNK arrivals each, in order.

    They come from a numpy SFC64 bit generator seeded with one 63-bit draw from
    `generator` (torch's default generator when None): raw words cost ~4x less than
    torch's CPU Mersenne twister uniforms, and the stream is still a function of the torch
    generator's state, so seeds, checkpoints and resumed runs replay it exactly.
    """
    seed = int(torch.randint(2**63 - 1, (), generator=generator))
    bits = np.random.SFC64(seed)
    numel = math.prod(shape)
    for start in range(0, n_exp, ARRIVAL_CHUNK):
        count = min(ARRIVAL_CHUNK, n_exp - start)
        raw = bits.random_raw((count * numel + 1) // 2)  # two 32-bit words per draw
        yield torch.from_numpy(raw.view(np.int32)[: count * numel]).view(count, *shape)


def log_uniform_(words: Tensor) -> Tensor:
    """log U from random int32 words, in place. f is the float32 with exponent 0 and the
    word's low 23 bits m as fraction (f = 1 + m 2^-23), and U = f - (1 - 2^-24) =
    (m + 1/2) 2^-23, exactly: U is uniform on the midpoints of 2^23 equal cells of (0, 1),
    never 0 or 1, and -log U is Exp(1) (largest value 24 ln 2 = 16.6). Returns a float32
    view of the words' memory."""
    f = words.bitwise_and_(_MANTISSA).bitwise_or_(_ONE).view(torch.float32)
    return f.sub_(_JUST_BELOW_ONE).log_()


def arrival_log_uniforms(n_exp: int, shape: torch.Size, generator=None) -> Iterator[Tensor]:
    """log U [c, *shape] chunks for n_exp arrivals (-log U ~ Exp(1)): the CPU noise."""
    for words in arrival_words(n_exp, shape, generator):
        yield log_uniform_(words)


class _RelaxedPoissonStream(torch.autograd.Function):
    """z = sum_j sigmoid((1 - S_j / r) / tau), r = exp(u) + eps, S_j unit-rate arrivals.

    The arrivals are accumulated a few at a time in [B, K] buffers, from the given Exp(1)
    noise [n_exp, B, K] or, with noise None, from n_exp fresh draws of the generator (the
    stream `exponential_noise` draws). Forward accumulates the sample and its derivative
    dz/du together, so neither [n_exp, B, K] intermediates nor (without given noise) the
    noise itself are ever stored: backward keeps one [B, K] tensor. The result and
    gradient equal those of the plain autograd expression (tested).

    With a_j = (1 - S_j / r) / tau = 1/tau - S_j k, k = 1 / (r tau):
    dz/du = sum_j s_j (1 - s_j) S_j * k e^u / r, s_j = sigmoid(a_j).
    """

    @staticmethod
    def forward(ctx, u: Tensor, temp: float, n_exp: int, noise: Tensor | None,
                generator, kernel) -> Tensor:
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
            if need_grad:
                dz_du = (sig * (1.0 - sig) * arrivals).sum(0)
                ctx.save_for_backward(dz_du.mul_(k).mul_(exp_u / rate))
            return sig.sum(0)
        arrival = torch.zeros_like(u)  # S_j
        z = torch.zeros_like(u)
        acc = torch.zeros_like(u) if need_grad else None  # sum_j s_j (1 - s_j) S_j
        if noise is not None:
            _accumulate_arrivals(noise, 1.0, arrival, z, acc, k, inv_temp)
        else:
            for log_u in arrival_log_uniforms(n_exp, u.shape, generator):
                if kernel is None:
                    _accumulate_arrivals(log_u, -1.0, arrival, z, acc, k, inv_temp)
                else:
                    arrival, z, acc = kernel(log_u, arrival, z, acc, k, inv_temp)
        if need_grad:
            ctx.save_for_backward(acc.mul_(k).mul_(exp_u / rate))
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor):
        (dz_du,) = ctx.saved_tensors
        return grad_z * dz_du, None, None, None, None, None


def _accumulate_arrivals(draws: Tensor, sign: float, arrival: Tensor, z: Tensor,
                         acc: Tensor | None, k: Tensor, inv_temp: Tensor) -> None:
    """Add the arrivals of `draws` [c, B, K] (Exp(1) draws, or log U with sign -1) to the
    running arrival time, sample z and derivative sum acc, in place (eager CPU path)."""
    sig = torch.empty_like(z)
    slope = torch.empty_like(z) if acc is not None else None
    for draw in draws:
        arrival.add_(draw, alpha=sign)
        torch.addcmul(inv_temp, arrival, k, value=-1.0, out=sig).sigmoid_()
        z.add_(sig)
        if acc is not None:
            torch.addcmul(sig, sig, sig, value=-1.0, out=slope)  # s (1 - s)
            acc.addcmul_(slope, arrival)


def arrival_kernel(log_u: Tensor, arrival: Tensor, z: Tensor, acc: Tensor | None, k: Tensor,
                   inv_temp: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """`_accumulate_arrivals` of a chunk of log U [c, B, K] (sign -1), written out of place
    for torch.compile (IterativeVAE.enable_compile), which fuses the chunk into one loop
    over [B, K]. Returns the new (arrival, z, acc)."""
    for draw in log_u:
        arrival = arrival - draw
        sig = torch.sigmoid(inv_temp - arrival * k)
        z = z + sig
        if acc is not None:
            acc = acc + sig * (1.0 - sig) * arrival
    return arrival, z, acc


def relaxed_poisson(u: Tensor, temp: float, noise: Tensor | None = None, n_exp: int | None = None,
                    generator=None, kernel=None) -> Tensor:
    """Relaxed Poisson sample at temperature tau > 0 (SPEC 4), differentiable in u.

    u: log-rates [B, K]. Either noise: standard Exp(1) draws [n_exp, B, K] (exact replay),
    or noise None and n_exp: the sampler draws its n_exp arrivals itself from `generator`
    a few [B, K] at a time (the fast path: no [n_exp, B, K] tensor). Returns z [B, K].
    Both give the same result for the same generator state. tau -> 0 gives the exact
    Poisson count (truncated at n_exp events). kernel: `arrival_kernel` compiled, for the
    CPU fast path (None: eager).
    """
    if noise is None:
        if n_exp is None:
            raise ValueError("relaxed_poisson needs either noise or n_exp")
    else:
        n_exp = noise.shape[0]
    return _RelaxedPoissonStream.apply(u, float(temp), int(n_exp), noise, generator, kernel)


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
