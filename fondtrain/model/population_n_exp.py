"""Sampler lengths of a population (SPEC 4.2, 4.3, 6.7, 9.2): each member its own n_exp,
one batched relaxed Poisson sampler for all of them.

Members with different rates need different sampler lengths: a beta sweep moves a
member's largest posterior rate, and with it n_exp_for_rate, by a few arrivals. Each
member keeps its own table n_exp[i, t] [P, t_total], refreshed from its own rate
profile (`member_n_exp_table`, `refresh_member_tables`: the refresh rule of 6.7 per member, with the
member's own warm-up). The batched sampler of step t runs the longest of them,

    n_max[t] = max_i n_exp[i, t]                                   (`step_lengths`, host ints)

arrivals for every member, and multiplies arrival j's term of member i by

    mask[j, i] = 1 if j < n_exp[i, t] else 0                       (`arrival_mask`, [n_max, P, 1, 1])

so member i's sample is the sum of exactly its own n_exp[i, t] terms:

    z_i = sum_{j < n_exp[i, t]} sigmoid((1 - S_ij / r_i) / tau_i)     [B, K]

the single-model sampler's truncated sum, with the single model's distribution
(its noise rows j >= n_exp[i, t] are drawn and discarded). With explicit noise
[n_max, P, B, K] member i's sample equals the single-model sampler on noise[:n_i, i]:
with a running sum over arrivals (the loop form of issue 16's compiled sampler), adding
a masked term adds an exact zero, so the sums are bit for bit those of the member's own
loop (tested); a reduction over the arrival axis may group the additions differently
(float rounding). The same mask multiplies the derivative terms s_j (1 - s_j) S_j of
the fused sampler's dz/du, so a masked arrival adds nothing to the gradient either.

Cost: the sampler computes P n_max[t] B K terms where the members need sum_i n_exp[i, t]
B K (`masked_overhead`, 1 when the members agree). The mask is a [P, 1, 1] row per
arrival: no extra memory and one extra multiply per term. A member whose n_exp is 0
(every rate below about 1e-3) gets z = 0 exactly, as a single run does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fondtrain.model.n_exp import n_exp_for_rate
from fondtrain.model.poisson import FLOAT32_EPS, poisson_rate


def member_n_exp_table(max_rates: Tensor, p: float | Sequence[float]) -> Tensor:
    """n_exp[i, t] of every member from its largest rates at each step, [P, t_total] ->
    int32 [P, t_total]; p: the truncation probability (n_exp_p), shared or one per member.
    A rate of 0 counts as float32 eps, as for a single model."""
    rates = max_rates.detach().double().cpu()
    probs = [float(p)] * rates.shape[0] if isinstance(p, int | float) else [float(v) for v in p]
    table = [[n_exp_for_rate(max(float(r), FLOAT32_EPS), probs[i]) for r in row] for i, row in enumerate(rates)]
    return torch.tensor(table, dtype=torch.int32)


def refresh_member_tables(n_exp: Tensor, max_rates: Tensor, p: float | Sequence[float],
                          refresh: Tensor) -> Tensor:
    """The tables after a refresh (SPEC 6.7 per member): members with refresh[i] (past
    their own warm-up, [P] bool) take `member_n_exp_table` of their averaged largest rates
    [P, t_total] (agreed across the ranks that hold them); the others keep their row."""
    fresh = member_n_exp_table(max_rates, p).to(n_exp.device)
    return torch.where(refresh.to(n_exp.device).view(-1, 1), fresh, n_exp)


def step_lengths(n_exp: Tensor) -> list[int]:
    """The batched sampler's length of each step: the longest member's, [P, t_total] ->
    t_total host ints (read once per refresh, so no step syncs the device)."""
    return [int(v) for v in n_exp.amax(0).tolist()]


def arrival_mask(n_exp: Tensor, n_max: int) -> Tensor:
    """mask[j, i] = j < n_exp[i] as float [n_max, P, 1, 1] (row j: arrival j's [P, 1, 1]
    weight for terms [P, B, K]); n_exp [P] (integers), n_max >= max n_exp."""
    arrivals = torch.arange(n_max, device=n_exp.device).view(n_max, 1, 1, 1)
    return (arrivals < n_exp.view(1, -1, 1, 1)).float()


def relaxed_poisson_population(u: Tensor, temp: Tensor, noise: Tensor, n_exp: Tensor) -> Tensor:
    """The masked batched sampler written plainly (autograd), the specification of the
    fused and compiled ones: u [P, B, K], temp [P], noise Exp(1) [n_max, P, B, K],
    n_exp [P] -> z [P, B, K], member i summing its first n_exp[i] arrivals."""
    rate = poisson_rate(u)
    mask = arrival_mask(n_exp, noise.shape[0]).to(u.dtype)
    temp = temp.to(u.dtype).view(-1, 1, 1)
    times = torch.zeros_like(rate)
    z = torch.zeros_like(rate)
    for j in range(noise.shape[0]):
        times = times + noise[j] / rate
        z = z + mask[j] * torch.sigmoid((1.0 - times) / temp)
    return z


def masked_overhead(n_exp: Tensor) -> float:
    """Arrival terms the batched sampler computes over those the members need:
    P sum_t max_i n_exp[i, t] / sum_{i, t} n_exp[i, t] (1 when the members agree)."""
    needed = int(n_exp.sum())
    computed = n_exp.shape[0] * int(n_exp.amax(0).sum())
    return computed / needed if needed else 1.0
