"""A population's sampler lengths: the masked batched sampler gives each member exactly
its own truncated sum."""

from __future__ import annotations

import torch

from fondtrain.model.n_exp import n_exp_for_rate
from fondtrain.model.poisson import relaxed_poisson_reference
from fondtrain.model.population_n_exp import (
    arrival_mask,
    masked_overhead,
    member_n_exp_table,
    refresh_member_tables,
    relaxed_poisson_population,
    step_lengths,
)

P, B, K = 4, 5, 7


def own_sum(u: torch.Tensor, temp: float, noise: torch.Tensor) -> torch.Tensor:
    """A single model's relaxed sample over its own arrivals, summed arrival by arrival."""
    rate = torch.exp(u) + torch.finfo(torch.float32).eps
    times, z = torch.zeros_like(rate), torch.zeros_like(rate)
    for j in range(noise.shape[0]):
        times = times + noise[j] / rate
        z = z + torch.sigmoid((1.0 - times) / temp)
    return z


def test_masked_terms_give_each_member_its_own_truncated_sum():
    gen = torch.Generator().manual_seed(0)
    # members on different rate scales: their own lengths differ (one needs none)
    u = (torch.randn(P, B, K, generator=gen) * 0.5 + torch.tensor([-1.0, 0.5, 1.5, -9.0]).view(P, 1, 1))
    u.requires_grad_(True)
    temp = torch.tensor([0.5, 0.1, 1.0, 0.3])
    n_exp = torch.tensor([4, 9, 13, 0])
    noise = torch.empty(13, P, B, K).exponential_(generator=gen)
    z = relaxed_poisson_population(u, temp, noise, n_exp)
    weights = torch.randn(P, B, K, generator=gen)
    (z * weights).sum().backward()
    for i in range(P):
        n = int(n_exp[i])
        u_i = u.detach()[i].clone().requires_grad_(True)
        expected = own_sum(u_i, float(temp[i]), noise[:n, i])
        assert torch.equal(z[i].detach(), expected.detach())  # bit for bit
        if n:
            (expected * weights[i]).sum().backward()
            assert torch.equal(u.grad[i], u_i.grad)
        else:  # no arrival: no gradient
            assert torch.equal(u.grad[i], torch.zeros(B, K))
        if n:  # and the reference expression, to its own order of additions
            reference = relaxed_poisson_reference(u.detach()[i], float(temp[i]), noise[:n, i])
            torch.testing.assert_close(z[i].detach(), reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(z[3], torch.zeros(B, K))  # n_exp 0: z = 0, as a single run
    assert z[2].sum() > z[1].sum() > 0


def test_arrival_mask_marks_each_members_first_arrivals():
    mask = arrival_mask(torch.tensor([0, 2, 3]), 3)
    assert mask.shape == (3, 3, 1, 1)
    assert mask[:, :, 0, 0].T.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_member_tables_step_lengths_and_overhead():
    rates = torch.tensor([[0.5, 2.0, 0.0], [3.0, 0.1, 8.0]])
    table = member_n_exp_table(rates, [1e-3, 1e-2])
    assert table.dtype == torch.int32 and table.shape == (2, 3)
    assert table[0].tolist() == [n_exp_for_rate(0.5, 1e-3), n_exp_for_rate(2.0, 1e-3),
                                 n_exp_for_rate(torch.finfo(torch.float32).eps, 1e-3)]
    assert table[1].tolist() == [n_exp_for_rate(r, 1e-2) for r in (3.0, 0.1, 8.0)]
    assert step_lengths(table) == [max(int(a), int(b)) for a, b in zip(table[0], table[1], strict=True)]
    # a member still in its warm-up keeps its table
    old = torch.full((2, 3), 10, dtype=torch.int32)
    refreshed = refresh_member_tables(old, rates, [1e-3, 1e-2], torch.tensor([False, True]))
    assert refreshed[0].tolist() == [10, 10, 10] and torch.equal(refreshed[1], table[1])
    fixed = torch.tensor([[2, 4], [4, 4]])
    assert masked_overhead(fixed) == 2 * (4 + 4) / 14
    assert masked_overhead(torch.tensor([[3, 3], [3, 3]])) == 1.0
    assert masked_overhead(torch.zeros(2, 2, dtype=torch.int32)) == 1.0
