"""A population's CPU cycle in member chunks (`fondtrain.model.cycle._in_member_chunks`)
gives the numbers of the whole cycle: losses, statistics, states and gradients, for every preset,
and trains like it through the trainer's TBPTT step (n_iters_outer 2, grad_accum 2)."""

from __future__ import annotations

import pytest
import torch

from fondtrain.config.sweep import members_from_sweep
from fondtrain.model import cycle
from fondtrain.model.states import State
from fondtrain.model.vae import IterativeVAE
from tests.test_population_model import ATOL as POP_ATOL
from tests.test_population_model import RTOL as POP_RTOL
from tests.test_population_model import SWEEP, _base, _batches, _train_population

PRESETS = ("ipvae", "igvae", "igrelu")
P, B, N_STEPS = 5, 4, 3
# Member i's ops are the same in both paths, on its own slice; only a batched product
# over c instead of P members might add in another order (a few ulps). Measured: equal
# bit for bit here; the tolerance allows that rounding and nothing more.
RTOL, ATOL = 1e-6, 1e-7


def _chunks_of(monkeypatch, members: int, batch: int, n_latents: int) -> None:
    """Make a chunk hold `members` members of [batch, n_latents] state tensors."""
    monkeypatch.setattr(cycle, "CHUNK_BYTES", members * batch * n_latents * 4)


def _population(preset: str) -> IterativeVAE:
    base = _base(preset)
    sweep = [dict(SWEEP[i % len(SWEEP)], seed=i) for i in range(P)]
    model = IterativeVAE(base.model, [m.config.model for m in members_from_sweep(base, sweep)])
    model.generators = [torch.Generator().manual_seed(i) for i in range(P)]
    return model


def _cycle(model: IterativeVAE, inputs, temp, beta, eps, noise=None):
    """One cycle from a perturbed initial state (so that the state's own gradient path
    matters), backward on the members' summed loss; returns outputs and gradients."""
    model.generators = [torch.Generator().manual_seed(i) for i in range(P)]
    model.zero_grad(set_to_none=True)
    state = model.init_state(B)
    state = State(tuple(c + 0.1 * torch.sin(torch.arange(c.numel(), dtype=c.dtype)).view_as(c)
                        for c in state.components))
    out = model(inputs, state, 1, N_STEPS, temp, beta, eps, noise)
    out.loss.sum().backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_same(a, b) -> None:
    (out_a, grads_a), (out_b, grads_b) = a, b
    for field in ("loss", "step_losses", "recon", "kl", "max_rate", "last_z", "last_x_hat", "last_x"):
        va, vb = getattr(out_a, field), getattr(out_b, field)
        if va is None:
            assert vb is None
            continue
        torch.testing.assert_close(va, vb, rtol=RTOL, atol=ATOL, msg=field)
    for ca, cb in zip(out_a.state.components, out_b.state.components, strict=True):
        torch.testing.assert_close(ca, cb, rtol=RTOL, atol=ATOL)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("inputs_kind", ["shared", "per_member", "sequence"])
def test_chunked_cycle_equals_the_whole_cycle(preset, inputs_kind, monkeypatch):
    model = _population(preset)
    m = model.config.input_dim
    gen = torch.Generator().manual_seed(3)
    shape = {"shared": (B, m), "per_member": (P, B, m), "sequence": (N_STEPS, P, B, m)}[inputs_kind]
    inputs = torch.randn(shape, generator=gen)
    temp = torch.tensor([0.5, 0.3, 1.0, 0.7, 0.4]) if model.is_poisson else torch.ones(P)
    beta, eps = torch.linspace(0.5, 3.0, P), torch.tensor([1.0, 0.5, 0.8, 0.2, 1.0])
    if model.is_poisson:  # members with different sampler lengths
        model.set_n_exp(torch.tensor([0.5, 4.0, 12.0, 2.0, 7.0]).view(P, 1).expand(P, model.n_exp.shape[1]))
    state = model.init_state(B)
    assert not cycle._use_chunks(model, state, model.generators)  # one chunk holds all 5
    whole = _cycle(model, inputs, temp, beta, eps)
    _chunks_of(monkeypatch, 2, B, model.config.n_latents)  # chunks of 2, 2 and 1 members
    assert cycle._use_chunks(model, state, model.generators)
    chunked = _cycle(model, inputs, temp, beta, eps)
    _assert_same(chunked, whole)
    # a test that could fail: the members' gradients differ from each other
    assert not torch.allclose(whole[1]["W"][0], whole[1]["W"][1])


@pytest.mark.parametrize("preset", ["ipvae", "igvae"])
def test_chunked_cycle_replays_given_noise(preset, monkeypatch):
    """Explicit noise (exact replay) is sliced per chunk: Gaussian [P, B, K], Poisson
    [n_max, P, B, K]."""
    model = _population(preset)
    state = model.init_state(B)
    temp = 0.5 if model.is_poisson else 1.0
    gens = [torch.Generator().manual_seed(50 + i) for i in range(P)]
    noise = [tuple(model.draw_noise(state, temp, 1 + t, gens)
                   for _ in range(model.config.n_iters_inner + 1)) for t in range(N_STEPS)]
    x = torch.randn(B, model.config.input_dim, generator=torch.Generator().manual_seed(4))
    whole = _cycle(model, x, temp, 1.0, 1.0, noise)
    _chunks_of(monkeypatch, 2, B, model.config.n_latents)
    chunked = _cycle(model, x, temp, 1.0, 1.0, noise)
    _assert_same(chunked, whole)


def test_no_chunks_without_each_members_own_generator(monkeypatch):
    """Members drawing from one shared generator would get its numbers in another order
    chunk by chunk: such a cycle runs whole."""
    model = _population("igvae")
    _chunks_of(monkeypatch, 2, B, model.config.n_latents)
    state = model.init_state(B)
    assert cycle._use_chunks(model, state, model.generators)
    model.generators = None
    assert not cycle._use_chunks(model, state, model.generators)
    assert cycle._use_chunks(model, state, [torch.Generator() for _ in range(P)])


@pytest.mark.parametrize("preset", PRESETS)
def test_chunked_population_trains_like_the_whole_one(preset, monkeypatch):
    """Through the trainer's step (schedules, grad_accum 2, n_iters_outer 2, per-member
    clipping and Adamax, n_exp refresh): chunks of one member against the whole cycle."""
    base = _base(preset)
    members = members_from_sweep(base, SWEEP)
    batches = _batches(base)
    whole = _train_population(members, batches)
    micro_batch = base.train.batch_size  # grad_accum splits the batch
    _chunks_of(monkeypatch, 1, micro_batch, base.model.n_latents)
    calls = []
    chunked_forward = cycle._in_member_chunks
    monkeypatch.setattr(cycle, "_in_member_chunks",
                        lambda *a, **k: calls.append(1) or chunked_forward(*a, **k))
    chunked = _train_population(members, batches)
    assert len(calls) == len(batches) * base.model.n_iters_outer * base.train.grad_accum
    # A cycle's outputs agree to an ulp here (ipvae, measured: KL 4.8e-7, z 1.2e-7 with the
    # hashed sampler draws); 4 Adamax steps grow that as in the population-vs-single test
    # (measured: 2.4e-6 in W of size 1.6, losses 1.4e-5 relative), whose tolerance this takes.
    for name, value in whole["params"].items():
        torch.testing.assert_close(chunked["params"][name], value, rtol=POP_RTOL, atol=POP_ATOL, msg=name)
    torch.testing.assert_close(chunked["losses"], whole["losses"], rtol=POP_RTOL, atol=POP_ATOL)
    assert torch.equal(chunked["n_exp"], whole["n_exp"])
