"""A population's sampler lengths: the relaxed Poisson sampler, with the arrivals beyond
each member's n_exp masked or never drawn, gives each member exactly its own truncated sum;
each member keeps its own n_exp table."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.model.n_exp import n_exp_for_rate
from fondtrain.model.relaxed_poisson import _graph_sample, _vectorized, arrival_mask, relaxed_poisson
from fondtrain.model.vae import IterativeVAE
from tests.oracles import relaxed_poisson_reference

P, B, K = 4, 5, 7


def own_sum(u: torch.Tensor, temp: float, noise: torch.Tensor) -> torch.Tensor:
    """A single model's relaxed sample over its own arrivals, summed arrival by arrival."""
    rate = torch.exp(u) + torch.finfo(torch.float32).eps
    times, z = torch.zeros_like(rate), torch.zeros_like(rate)
    for j in range(noise.shape[0]):
        times = times + noise[j] / rate
        z = z + torch.sigmoid((1.0 - times) / temp)
    return z


def _members():
    gen = torch.Generator().manual_seed(0)
    # members on different rate scales: their own lengths differ (one needs none)
    u = (torch.randn(P, B, K, generator=gen) * 0.5 + torch.tensor([-1.0, 0.5, 1.5, -9.0]).view(P, 1, 1))
    temp = torch.tensor([0.5, 0.1, 1.0, 0.3])
    n_exp = torch.tensor([4, 9, 13, 0])
    noise = torch.empty(13, P, B, K).exponential_(generator=gen)
    weights = torch.randn(P, B, K, generator=gen)
    return u, temp, n_exp, noise, weights


def test_masked_terms_give_each_member_its_own_truncated_sum():
    """The eager sampler (on a CPU: member by member) on noise [n_max, P, B, K]: member i
    sums its first n_exp[i] arrivals at its own temperature, bit for bit its own single
    run (a population of one on its own rows), value and gradient."""
    u, temp, n_exp, noise, weights = _members()
    u.requires_grad_(True)
    z = relaxed_poisson(u, temp, n_exp.tolist(), noise)
    (z * weights).sum().backward()
    for i in range(P):
        n = int(n_exp[i])
        u_i = u.detach()[i:i + 1].clone().requires_grad_(True)
        single = relaxed_poisson(u_i, float(temp[i]), [n], noise[:n, i:i + 1])
        assert torch.equal(z[i].detach(), single[0].detach())  # bit for bit
        if n:
            (single[0] * weights[i]).sum().backward()
            assert torch.equal(u.grad[i], u_i.grad[0])
        else:  # no arrival: no gradient
            assert torch.equal(u.grad[i], torch.zeros(B, K))
        if n:  # and the plain expressions, to their own order of additions
            own = own_sum(u.detach()[i], float(temp[i]), noise[:n, i])
            torch.testing.assert_close(z[i].detach(), own, rtol=1e-6, atol=1e-6)
            reference = relaxed_poisson_reference(u.detach()[i], float(temp[i]), noise[:n, i])
            torch.testing.assert_close(z[i].detach(), reference, rtol=1e-6, atol=1e-6)
    assert torch.equal(z[3], torch.zeros(B, K))  # n_exp 0: z = 0, as a single run
    assert z[2].sum() > z[1].sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_drawn_samples_give_each_member_its_own_single_run(dtype):
    """Drawing its own arrivals (float32: the C kernel where it is built; float64: the
    torch code), the sampler gives member i, from its own generator, at its own
    temperature and length, bit for bit its single run's sample and gradient."""
    u, temp, n_exp, _, weights = _members()
    u = u.to(dtype).requires_grad_(True)
    seeds = [11, 12, 13, 14]
    z = relaxed_poisson(u, temp, n_exp.tolist(), generators=[torch.Generator().manual_seed(s) for s in seeds])
    (z * weights.to(dtype)).sum().backward()
    for i in range(P):
        u_i = u.detach()[i:i + 1].clone().requires_grad_(True)
        single = relaxed_poisson(u_i, float(temp[i]), [int(n_exp[i])],
                                 generators=[torch.Generator().manual_seed(seeds[i])])
        (single[0] * weights[i].to(dtype)).sum().backward()
        assert torch.equal(z[i].detach(), single[0].detach())
        assert torch.equal(u.grad[i], u_i.grad[0])
    assert torch.equal(z[3].detach(), torch.zeros(B, K, dtype=dtype))  # n_exp 0
    assert 0 < z[1].sum() < z[2].sum()


@pytest.mark.parametrize("form", ["graph", "vectorized"])
def test_batched_forms_give_each_member_its_own_truncated_sum(form: str):
    """The whole-population forms (the graph loop of torch.compile, the accelerators'
    kernels; called directly here) mask the arrivals beyond each member's n_exp: the graph
    loop adds exact zeros for them, so member i's sum is bit for bit its own loop's; the
    vectorized one sums over the arrival axis (rounding apart)."""
    u, temp, n_exp, noise, weights = _members()
    if form == "graph":
        u_all = u.clone().requires_grad_(True)
        z = _graph_sample(u_all, temp, n_exp, 16, noise, None, 0)  # a bucket's loop length
        (grad,) = torch.autograd.grad((z * weights).sum(), u_all)
    else:
        z, dz_du = _vectorized(u, temp.tolist(), n_exp.tolist(), noise, (None,) * P, True)
        grad = weights * dz_du
    for i in range(P):
        n = int(n_exp[i])
        if form == "graph":  # member i alone, its own rows, no masked arrival
            u_i = u[i:i + 1].clone().requires_grad_(True)
            own = _graph_sample(u_i, temp[i:i + 1], n_exp[i:i + 1], None, noise[:n, i:i + 1], None, 0)
            (own_grad,) = torch.autograd.grad((own * weights[i]).sum(), u_i)
            assert torch.equal(z[i].detach(), own[0].detach())  # bit for bit
            assert torch.equal(grad[i], own_grad[0])
        elif n:
            single = relaxed_poisson(u[i:i + 1].clone().requires_grad_(True), float(temp[i]), [n],
                                     noise[:n, i:i + 1])
            torch.testing.assert_close(z[i], single[0].detach(), rtol=1e-6, atol=1e-6)
    assert torch.equal(z[3].detach(), torch.zeros(B, K)) and torch.equal(grad[3], torch.zeros(B, K))
    eager = relaxed_poisson(u, temp, n_exp.tolist(), noise)
    torch.testing.assert_close(z.detach(), eager, rtol=1e-6, atol=1e-6)


def test_arrival_mask_marks_each_members_first_arrivals():
    mask = arrival_mask(torch.tensor([0, 2, 3]), 3)
    assert mask.shape == (3, 3, 1, 1)
    assert mask[:, :, 0, 0].T.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_member_tables_and_step_lengths():
    """`set_n_exp` fills each member's row from its own rates ([P, t_total]); a member
    still in its warm-up (refresh False) keeps its row; `n_exp_at` gives each member's
    length at a step, `longest_n_exp` the longest of any member and step."""
    config = ModelConfig(preset="ipvae", input_dim=4, n_latents=3, t_train=3, n_exp_p=1e-2)
    model = IterativeVAE(config, [config, dataclasses.replace(config, seed=1)])
    rates = torch.tensor([[0.5, 2.0, 0.0], [3.0, 0.1, 8.0]])
    model.set_n_exp(rates)
    table = model.n_exp.clone()
    assert table.dtype == torch.int32 and table.shape == (2, 3)
    assert table[0].tolist() == [n_exp_for_rate(0.5, 1e-2), n_exp_for_rate(2.0, 1e-2),
                                 n_exp_for_rate(torch.finfo(torch.float32).eps, 1e-2)]
    assert table[1].tolist() == [n_exp_for_rate(r, 1e-2) for r in (3.0, 0.1, 8.0)]
    assert [model.n_exp_at(t) for t in range(3)] == [[int(a), int(b)] for a, b in zip(table[0], table[1], strict=True)]
    assert model.longest_n_exp() == int(table.max())
    # a member still in its warm-up keeps its table
    model.fill_n_exp(10)
    assert model.n_exp.tolist() == [[10, 10, 10]] * 2 and model.n_exp_at(1) == [10, 10]
    model.set_n_exp(rates, torch.tensor([False, True]))
    assert model.n_exp[0].tolist() == [10, 10, 10] and torch.equal(model.n_exp[1], table[1])
    assert model.n_exp_at(2) == [10, int(table[1, 2])]
    with pytest.raises(ValueError):  # one row per member
        model.set_n_exp(rates[:1])
