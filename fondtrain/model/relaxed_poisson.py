"""The relaxed Poisson sampler of iP-VAE (SPEC 4), for every member of a population at once.

    z = sum_{j < n} sigmoid((1 - S_j / r) / tau),  r = exp(u) + eps,  S_j unit-rate arrivals

u [P, B, K]; member i sums its own n_exp[i] arrivals at its own temperature tau_i, from
its own random numbers, so its sample is its single run's. tau -> 0 gives the exact
Poisson count truncated at n events.

One function, `relaxed_poisson`, three ways to run it (the same numbers given the same
draws, tested):
- eager on a CPU: member by member. Drawing its own arrivals, from the hashed stream
  (`random_streams.hashed_exponential`) of two keys drawn from the member's generator
  per sample: float32 by a compiled C kernel (`kernels/relaxed_poisson.c`, built at first
  use), else (no C compiler, or float64) by `_sum_arrivals`. Given explicit noise, by
  `_sum_arrivals`. Both compute only the arrivals of entries not yet finished (most
  entries of a sparse posterior finish after an arrival or two) and never hold [n, B, K].
- eager on accelerators: a few whole-tensor kernels over [n_max, P, B, K], the arrivals
  beyond a member's n_exp masked;
- inside torch.compile: a plain loop over n_max arrivals with [P, B, K] running sums
  (fixed shapes, no host reads), draws from the hashed streams, the arrivals beyond
  n_exp masked.
Eager forward accumulates the sample and its derivative dz/du together (one autograd
node that keeps one [P, B, K] tensor); the graph form returns z + dz/du (u - stopgrad u),
the same value and pathwise gradient. With a_j = 1/tau - S_j k, k = 1 / (r tau):
dz/du = sum_j s_j (1 - s_j) S_j k e^u / r, s_j = sigmoid(a_j).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fondtrain.model.kernels import sampler as kernel
from fondtrain.model.poisson import FLOAT32_EPS
from fondtrain.model.random_streams import (
    check_counters,
    draw_keys,
    hashed_exponential,
    hashed_exponential_at,
    member_exponential_noise,
    member_generators,
)

# Once at least this fraction of the entries still computed have finished (see
# `_sum_arrivals`), the sampler drops them from its working set.
COMPACT_FRACTION = 0.25
# Values per block of arrivals in `_sum_arrivals` (1 MB of float32: about a core's L2).
ARRIVAL_BLOCK = 2**18


def relaxed_poisson(u: Tensor, temp, n_exp, noise: Tensor | None = None, generators=None,
                    keys: Tensor | None = None, first_draw: int = 0, n_max: int | None = None) -> Tensor:
    """Relaxed Poisson samples z [P, B, K] of log-rates u [P, B, K], differentiable in u.

    temp: one temperature > 0 (a float) or one per member ([P]); n_exp: each member's number
    of arrivals (P ints; a [P] integer tensor inside torch.compile, with the static loop
    length `n_max` >= every n_exp). noise: Exp(1) draws [n, P, B, K] to replay (member i
    reads rows < n_exp[i]); without it the draws come from `generators` (one per member,
    None: torch's default generator): on a CPU draws 0 .. n_exp - 1 of the hashed stream
    of two keys taken from the member's generator (`draw_keys`; the rows that
    `random_streams.exponential_noise` gives from the same generator state), on
    accelerators torch's uniforms. Inside torch.compile the draws come from the hashed
    streams keyed by `keys` [P, 2] (draws first_draw .. first_draw + n_max - 1;
    torch.rand_like without keys).
    """
    if torch.compiler.is_compiling():
        return _graph_sample(u, temp, n_exp, n_max, noise, keys, first_draw)
    p = u.shape[0]
    temps = [float(v) for v in temp.tolist()] if isinstance(temp, Tensor) and temp.dim() else [float(temp)] * p
    lengths = [int(n) for n in (n_exp.tolist() if isinstance(n_exp, Tensor) else n_exp)]
    if len(lengths) != p or len(temps) != p:
        raise ValueError(f"need one n_exp and temperature per member ({p})")
    if min(temps) <= 0:
        raise ValueError("the relaxed sampler needs temperatures above 0 (every member at 0: the exact sampler)")
    return _RelaxedPoisson.apply(u, tuple(temps), tuple(lengths), noise,
                                 tuple(member_generators(generators, p)))


class _RelaxedPoisson(torch.autograd.Function):
    """The eager sampler: z and dz/du in one pass; backward multiplies by the saved dz/du."""

    @staticmethod
    def forward(ctx, u: Tensor, temps: tuple[float, ...], lengths: tuple[int, ...],
                noise: Tensor | None, generators: tuple) -> Tensor:
        need_grad = ctx.needs_input_grad[0]
        if u.device.type != "cpu":
            z, dz_du = _vectorized(u, temps, lengths, noise, generators, need_grad)
        elif noise is None:
            z, dz_du = _drawn(u, temps, lengths, generators, need_grad)
        else:
            z, dz_du = _stack([_streamed(u[i], temps[i], lengths[i], noise[:lengths[i], i], None, need_grad)
                               for i in range(u.shape[0])])
        if need_grad:
            ctx.save_for_backward(dz_du)
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor):
        (dz_du,) = ctx.saved_tensors
        return grad_z * dz_du, None, None, None, None


def _drawn(u: Tensor, temps, lengths, generators, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Every member on a CPU, drawing its arrivals from the hashed stream of two keys
    from its generator: by the C kernel where it is built (float32), else member by
    member in torch. The two give the same numbers (to float32 rounding, tested)."""
    check_counters(u[0].numel(), max(lengths, default=0))
    keys = draw_keys(generators, u.shape[0])
    if u.dtype == torch.float32 and kernel.available():
        return kernel.relaxed_poisson_kernel(u, temps, lengths, keys, sigmoid_zero_below(u.dtype), need_grad)
    return _stack([_streamed(u[i], temps[i], lengths[i], None, keys[i], need_grad) for i in range(u.shape[0])])


def _stack(parts: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor | None]:
    z = torch.stack([zi for zi, _ in parts])
    return z, (torch.stack([di for _, di in parts]) if parts[0][1] is not None else None)


def _streamed(u: Tensor, temp: float, n_exp: int, noise: Tensor | None, key: Tensor | None,
              need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """One member on a CPU in torch: (z, dz/du) [B, K] from n_exp arrivals of `noise`
    [n_exp, B, K], or of the hashed stream of `key` [2] (only for entries not yet
    finished)."""
    exp_u = torch.exp(u)
    rate = exp_u + FLOAT32_EPS
    k = (rate * temp).reciprocal_()
    inv_temp = torch.tensor(1.0 / temp, dtype=u.dtype)
    n = k.numel()
    if noise is None:
        def draw(j: int, count: int, live: Tensor | None) -> Tensor:  # float32 draws j .. j + count - 1
            entries = torch.arange(n) if live is None else live
            return hashed_exponential_at(torch.arange(j, j + count).view(-1, 1) * n + entries, key)
    else:
        def draw(j: int, count: int, live: Tensor | None) -> Tensor:  # a copy
            rows = noise[j:j + count].reshape(count, -1)
            return rows.clone() if live is None else rows.index_select(1, live)
    z, acc = _sum_arrivals(draw, n_exp, k, inv_temp, need_grad)
    dz_du = acc.view_as(u).mul_(k).mul_(exp_u).div_(rate) if need_grad else None
    return z.view_as(u), dz_du


def _vectorized(u: Tensor, temps, lengths, noise, generators, need_grad: bool):
    """Every member at once on an accelerator: [n_max, P, B, K] kernels, member i's
    arrivals beyond n_exp[i] masked (so member i sums exactly its own terms)."""
    p = u.shape[0]
    if noise is None:
        noise = member_exponential_noise(lengths, u.shape[1:], u.device, generators)
    n_max = noise.shape[0]
    exp_u = torch.exp(u)
    rate = exp_u + FLOAT32_EPS
    temp = torch.tensor(temps, dtype=u.dtype, device=u.device).view(p, 1, 1)
    k = (rate * temp).reciprocal_()
    arrivals = torch.cumsum(noise[:n_max].to(u.dtype), dim=0)
    mask = arrival_mask(torch.tensor(lengths, device=u.device), n_max).to(u.dtype)
    sig = torch.sigmoid(temp.reciprocal() - arrivals * k) * mask
    z = sig.sum(0)
    dz_du = (sig * (1.0 - sig) * arrivals).sum(0).mul_(k).mul_(exp_u).div_(rate) if need_grad else None
    return z, dz_du


def arrival_mask(n_exp: Tensor, n_max: int) -> Tensor:
    """mask[j, i] = j < n_exp[i] as float [n_max, P, 1, 1]: arrival j's weight for member i."""
    arrivals = torch.arange(n_max, device=n_exp.device).view(n_max, 1, 1, 1)
    return (arrivals < n_exp.view(1, -1, 1, 1)).float()


def sigmoid_zero_below(dtype: torch.dtype) -> float:
    """An a below which sigmoid(a) = 1 / (1 + exp(-a)) is exactly 0 in `dtype`: exp(-a)
    overflows to inf (-89.7 in float32, -710.8 in float64)."""
    return -(math.log(torch.finfo(dtype).max) + 1.0)


def _sum_arrivals(draw, n_exp: int, k: Tensor, inv_temp: Tensor,
                  need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """z = sum_j sigmoid(a_j) and acc = sum_j s_j (1 - s_j) S_j on CPU, flat [B K] each.

    draw(j, count, live) gives arrivals j .. j + count - 1 for the working set, a new
    [count, n] tensor of Exp(1) draws: every entry of the flat [B K] when live is None,
    else the n entries `live` (indices into it). Arrivals
    are taken a few at a time (about ARRIVAL_BLOCK values per block) so that each torch
    call does a block's work: at these sizes the number of calls, not the arithmetic, is
    much of the cost.

    An entry is finished once a_j = 1/tau - S_j k falls below `sigmoid_zero_below`: S_j
    only grows, so every later sigmoid(a) and s (1 - s) S of it is exactly 0 and adding
    them changes nothing. So once a quarter of the working set has finished it is dropped
    (most entries of a sparse posterior finish after an arrival or two: the loop then
    runs, and draws, for the others), and the loop ends when none is left. Given the same
    draws per entry the result equals the sum over every arrival of every entry to
    rounding (tested: blocks add the same terms in another order).
    """
    k_live = k.reshape(-1)
    if n_exp == 0:  # the n_exp of a step whose rates are all below ~1e-3
        return torch.zeros_like(k_live), (torch.zeros_like(k_live) if need_grad else None)
    threshold = sigmoid_zero_below(k.dtype)
    arrival = z = acc = None  # of the working set
    z_out = acc_out = None  # of every entry, once the working set has shrunk
    live = None  # indices of the working set in the flat [B K]; None: every entry
    j = 0
    while j < n_exp:
        count = min(n_exp - j, max(1, ARRIVAL_BLOCK // max(1, k_live.numel())))
        times = draw(j, count, live).to(k.dtype)
        if arrival is not None:
            times[0].add_(arrival)
        for i in range(1, count):  # S_j .. S_{j+count-1}; row adds beat cumsum over dim 0
            times[i].add_(times[i - 1])
        a = torch.addcmul(inv_temp, times, k_live, value=-1.0)  # 1/tau - S k
        alive = a[-1] >= threshold
        sig = a.sigmoid_()
        z = sig.sum(0) if z is None else z.add_(sig.sum(0))
        if need_grad:
            slope_times = sig.sub_(sig * sig).mul_(times)  # s (1 - s) S
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
    return z_out, acc_out


def _graph_sample(u: Tensor, temp, n_exp: Tensor, n_max: int | None, noise: Tensor | None,
                  keys: Tensor | None, first_draw: int) -> Tensor:
    """The sampler as plain tensor expressions, for whole-graph capture: a loop over n_max
    arrivals with [P, B, K] running sums, arrivals j >= n_exp[i] masked."""
    p = u.shape[0]
    if noise is not None:  # replay: its rows (draw_noise's: the longest n_exp) hold every
        # arrival that counts, those beyond it are masked: loop over no more than it has
        n_max = noise.shape[0] if n_max is None else min(n_max, noise.shape[0])
    u_value = u.detach()
    exp_u = torch.exp(u_value)
    rate = exp_u + FLOAT32_EPS
    temp = torch.as_tensor(temp, dtype=u.dtype, device=u.device)
    temp = temp.view(-1, 1, 1) if temp.dim() else temp
    k = torch.reciprocal(rate * temp)
    inv_temp = 1.0 / temp
    counts = torch.as_tensor(n_exp, device=u.device).view(p, 1, 1)
    arrival = torch.zeros_like(u_value)
    z = torch.zeros_like(u_value)
    slope_sum = torch.zeros_like(u_value)  # sum_j s_j (1 - s_j) S_j
    for j in range(n_max):
        if noise is not None:
            e = noise[j]
        elif keys is not None:
            e = hashed_exponential(u_value, keys, first_draw + j)
        else:
            e = torch.rand_like(u_value).neg_().log1p_().neg_()  # -log(1 - U): never infinite
        arrival = arrival + e
        s = torch.sigmoid(inv_temp - arrival * k) * (counts > j).to(u.dtype)
        z = z + s
        slope_sum = slope_sum + (s - s * s) * arrival
    dz_du = slope_sum * k * exp_u / rate
    return z + dz_du * (u - u_value)

