"""Posterior samplers written for whole-graph capture (torch.compile fullgraph, CUDA graphs).

The eager samplers (poisson.py) use a custom autograd Function, numpy random words
and, on CPU, a working set that shrinks as entries finish: fast in eager mode, but none
of it can live inside one captured graph. The samplers here are plain tensor expressions
with fixed shapes, a loop length fixed when the graph is built and no host reads; their
random numbers are drawn on the device inside the graph (counter-based hashes on CPUs,
`torch.rand_like` elsewhere), or taken
from explicit noise for exact replay. (The Gaussian sampler needs nothing new:
`gaussian.gaussian_sample` with noise from `hashed_normal` or torch.randn_like.)

Relaxed Poisson (SPEC 4): z = sum_{j < n} sigmoid((1 - S_j / r) / tau), r = exp(u) + eps,
S_j the running sum of Exp(1) draws. The loop runs over arrivals with [B, K] running sums
and never holds [n_exp, B, K]. The loop length `n_max` is static (one graph per length);
the sampler length of the step, `n_exp` (a 0-dim integer tensor, n_exp <= n_max), masks
the arrivals j >= n_exp, so a graph built for n_max serves every n_exp up to it with the
exact distribution of an n_exp-arrival sampler, at the price of n_max - n_exp wasted
arrivals. The derivative dz/du is accumulated in the same loop (as the eager sampler
does), and z is returned as `z + dz/du (u - stopgrad(u))`: the value is z exactly (the
added term is 0), the pathwise gradient dz/du, and backward keeps one [B, K] tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fondtrain.model.poisson import FLOAT32_EPS

_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (xor-shift-multiply rounds, as in murmur / lowbias32) on
    int64 tensors holding values in [0, 2^32); multipliers below 2^31 keep every product
    below 2^63 (no signed overflow in any backend)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def hashed_uniform(u: Tensor, keys: Tensor, draw: int) -> Tensor:
    """Uniform draws of u's shape from a counter-based hash: element i of draw number
    `draw` hashes c = draw * numel + i under the two keys (int64 [2], fresh random values
    per window), mix(mix(c ^ k0) ^ k1); its top 23 bits m give U = (m + 1/2) 2^-23, the
    cell midpoints of `random_streams.log_uniform_` (never 0 or 1). Plain integer tensor
    operations that fuse into the sampler's kernel on CPUs, where the compiled
    torch.rand_like / randn_like are scalar code several times slower (and make the whole
    fused kernel scalar). `draw * numel + i` must stay below 2^32 (the caller checks)."""
    counter = torch.arange(u.numel(), device=u.device, dtype=torch.int64).view(u.shape)
    bits = _mix32(_mix32((counter + draw * u.numel()) ^ keys[0]) ^ keys[1])
    return ((bits >> 9).to(u.dtype) + 0.5) * 2.0**-23


def hashed_exponential(u: Tensor, keys: Tensor, draw: int) -> Tensor:
    """Exp(1) draws -log U of `hashed_uniform` (largest value 24 ln 2 = 16.6)."""
    return -torch.log(hashed_uniform(u, keys, draw))


def hashed_normal(u: Tensor, keys: Tensor, draw: int) -> Tensor:
    """N(0, 1) draws by Box-Muller from the hashed uniforms of draws 2 draw and
    2 draw + 1: sqrt(-2 log U1) cos(2 pi U2)."""
    radius = torch.sqrt(-2.0 * torch.log(hashed_uniform(u, keys, 2 * draw)))
    return radius * torch.cos((2.0 * math.pi) * hashed_uniform(u, keys, 2 * draw + 1))


def exponential_like(u: Tensor) -> Tensor:
    """Exp(1) draws of u's shape from torch's device generator: -log(1 - U), U in [0, 1),
    so never infinite (an infinite arrival would make s (1 - s) S a NaN)."""
    return torch.rand_like(u).neg_().log1p_().neg_()


def relaxed_poisson_graph(u: Tensor, temp: Tensor | float, n_max: int,
                          n_exp: Tensor | None = None, noise: Tensor | None = None,
                          keys: Tensor | None = None, first_draw: int = 0) -> Tensor:
    """Relaxed Poisson sample [B, K] from log-rates u [B, K] at temperature tau > 0.

    n_max: static number of arrivals computed; n_exp: 0-dim integer tensor, the arrivals
    that count (None: all n_max); noise: Exp(1) draws [n_max, B, K] to replay; else drawn
    inside the graph: with `keys` (int64 [2]) from `hashed_exponential`, draws
    first_draw .. first_draw + n_max - 1, otherwise from `torch.rand_like`. Given
    noise[:n_exp] as noise it equals `poisson.relaxed_poisson(u, temp,
    noise[:n_exp])` in value and gradient to float rounding (tested).
    """
    u_value = u.detach()
    exp_u = torch.exp(u_value)
    rate = exp_u + FLOAT32_EPS
    k = torch.reciprocal(rate * temp)
    inv_temp = 1.0 / temp
    arrival = torch.zeros_like(u_value)
    z = torch.zeros_like(u_value)
    slope_sum = torch.zeros_like(u_value)  # sum_j s_j (1 - s_j) S_j
    for j in range(n_max):
        if noise is not None:
            e = noise[j]
        elif keys is not None:
            e = hashed_exponential(u_value, keys, first_draw + j)
        else:
            e = exponential_like(u_value)
        arrival = arrival + e
        s = torch.sigmoid(inv_temp - arrival * k)
        if n_exp is not None:
            s = s * (n_exp > j).to(s.dtype)
        z = z + s
        slope_sum = slope_sum + (s - s * s) * arrival
    dz_du = slope_sum * k * exp_u / rate
    return z + dz_du * (u - u_value)

