"""Posterior samplers written for whole-graph capture (torch.compile fullgraph, CUDA graphs).

The eager samplers (distributions.py) use a custom autograd Function, numpy random words
and, on CPU, a working set that shrinks as entries finish: fast in eager mode, but none
of it can live inside one captured graph. The samplers here are plain tensor expressions
with fixed shapes, a loop length fixed when the graph is built and no host reads; their
random numbers are drawn on the device inside the graph (`torch.rand_like`), or taken
from explicit noise for exact replay. (The Gaussian sampler needs nothing new:
`distributions.gaussian_sample` with `torch.randn_like` noise.)

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

import torch
from torch import Tensor

from fondtrain.model.distributions import FLOAT32_EPS


def exponential_like(u: Tensor) -> Tensor:
    """Exp(1) draws of u's shape, on u's device: -log(1 - U), U in [0, 1), so never
    infinite (an infinite arrival would make s (1 - s) S a NaN)."""
    return torch.rand_like(u).neg_().log1p_().neg_()


def relaxed_poisson_graph(u: Tensor, temp: Tensor | float, n_max: int,
                          n_exp: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
    """Relaxed Poisson sample [B, K] from log-rates u [B, K] at temperature tau > 0.

    n_max: static number of arrivals computed; n_exp: 0-dim integer tensor, the arrivals
    that count (None: all n_max); noise: Exp(1) draws [n_max, B, K] to replay (None: drawn
    inside the graph). With noise[:n_exp] this equals `distributions.relaxed_poisson(u,
    temp, noise[:n_exp])` in value and gradient to float rounding (tested).
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
        arrival = arrival + (exponential_like(u_value) if noise is None else noise[j])
        s = torch.sigmoid(inv_temp - arrival * k)
        if n_exp is not None:
            s = s * (n_exp > j).to(s.dtype)
        z = z + s
        slope_sum = slope_sum + (s - s * s) * arrival
    dz_du = slope_sum * k * exp_u / rate
    return z + dz_du * (u - u_value)

